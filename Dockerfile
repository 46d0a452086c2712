# safepy-server with nsjail on Debian 12.
#
#   docker build -t safepy .
#       nsjail is built from the pinned upstream tag (needs github.com).
#   install -D /path/to/nsjail .nsjail/nsjail && docker build --build-arg NSJAIL_SOURCE=prebuilt -t safepy .
#       nsjail is copied from the build context (for builders without internet access;
#       .nsjail/nsjail is the only such file .dockerignore lets through, and it is gitignored).
#   docker run --rm -p 8080:8080 --privileged safepy
#       nsjail needs user namespaces inside the container: see deploy/README.md for the
#       minimum privileges (Docker, Cloud Run gen2, Kubernetes).
#
# BuildKit (the default since Docker 23) builds only the nsjail stage NSJAIL_SOURCE
# selects. buildah/podman before 1.29 (Debian 12 has podman 4.3 with buildah 1.28)
# ignore the default of an ARG used in FROM: pass --build-arg NSJAIL_SOURCE=build or
# =prebuilt explicitly there.

ARG DEBIAN_IMAGE=debian:bookworm-slim
ARG NSJAIL_SOURCE=build

# nsjail, default: built from the upstream release tag (with its kafel submodule).
FROM ${DEBIAN_IMAGE} AS nsjail-build
ARG NSJAIL_VERSION=3.6
ARG NSJAIL_REPOSITORY=https://github.com/google/nsjail
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates git make gcc g++ pkg-config autoconf bison flex libtool \
      libprotobuf-dev protobuf-compiler libnl-route-3-dev \
 && rm -rf /var/lib/apt/lists/*
RUN git clone --depth 1 --branch "${NSJAIL_VERSION}" --recursive "${NSJAIL_REPOSITORY}" /src/nsjail \
 && make -C /src/nsjail -j"$(nproc)" \
 && install -D -m 0755 -s /src/nsjail/nsjail /out/nsjail

# nsjail, alternative: the binary at .nsjail/nsjail in the build context (built for
# Debian 12 amd64; the one file there that .dockerignore lets through). The wildcard
# keeps builders that run every stage (Docker's legacy builder) from failing here when
# there is no such file; the runtime stage's COPY then fails if it was needed.
FROM scratch AS nsjail-prebuilt
COPY CMakeLists.txt .nsjail/nsjai[l] /out/

FROM nsjail-${NSJAIL_SOURCE} AS nsjail

# safepy and safepy-server, from this repository (tests and benchmarks are not built).
FROM ${DEBIAN_IMAGE} AS safepy-build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      cmake g++ make pkg-config \
      libboost1.81-dev libboost-json1.81-dev libboost-filesystem1.81-dev \
      libcli11-dev libseccomp-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY nsjail nsjail
COPY lib lib
COPY cli cli
COPY server server
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSAFEPY_BUILD_TESTS=OFF -DSAFEPY_BUILD_BENCH=OFF \
 && cmake --build build -j"$(nproc)" \
 && install -D -m 0755 -s build/cli/safepy /out/safepy \
 && install -D -m 0755 -s build/server/safepy-server /out/safepy-server
# The Debian packages that hold the shared libraries the two binaries link
# (the runtime stage installs exactly these; ldd paths are /lib/..., dpkg may know /usr/lib/...).
RUN for library in $(ldd /out/safepy /out/safepy-server | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u); do \
      dpkg -S "$library" 2>/dev/null || dpkg -S "/usr$library" 2>/dev/null \
        || { echo "no Debian package holds $library" >&2; exit 1; }; \
    done > /tmp/library-owners \
 && cut -d: -f1 /tmp/library-owners | sort -u > /out/runtime-packages \
 && cat /out/runtime-packages

# The runtime: Python with numpy and pandas, nsjail's libraries, the two binaries.
# No compilers, no apt lists or caches.
FROM ${DEBIAN_IMAGE}
COPY --from=safepy-build /out/runtime-packages /tmp/runtime-packages
# pandas without recommends: they pull pythran and a C++ compiler; munkres
# so that matplotlib's fonttools does not take scipy (and pythran) instead.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-numpy python3-pandas python3-matplotlib python3-munkres \
      libprotobuf32 libnl-route-3-200 \
      $(cat /tmp/runtime-packages) \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log \
      /tmp/runtime-packages
# Outside /usr: the sandbox mounts /usr, and scripts need not see these.
COPY --from=nsjail /out/nsjail /opt/safepy/bin/nsjail
COPY --from=safepy-build /out/safepy /out/safepy-server /opt/safepy/bin/
RUN if ldd /opt/safepy/bin/nsjail /opt/safepy/bin/safepy /opt/safepy/bin/safepy-server | grep 'not found'; then \
      echo "a binary misses a shared library (a prebuilt nsjail must be built for Debian 12)" >&2; exit 1; \
    fi \
 && if command -v cc gcc g++ c++ clang; then echo "a compiler reached the runtime image" >&2; exit 1; fi

ENV PATH=/opt/safepy/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PORT=8080
EXPOSE 8080
# /healthz: the process answers. /readyz (used by Kubernetes and image-smoke) also
# requires a working sandbox.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/bin/python3", "-I", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=4)"]
# The server is PID 1 (exec form): it receives SIGTERM and drains in-flight runs.
# It starts as root: it creates per-run cgroups and starts nsjail as a uid of its own per concurrent run (100000 and up).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/safepy/bin/safepy-server"]
CMD ["--jail", "nsjail", "--nsjail", "/opt/safepy/bin/nsjail"]
