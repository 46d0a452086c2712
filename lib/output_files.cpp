// Writing a run's files out of /tmp/out into a directory of the caller's
// choice, without ever following a link: every component is opened with
// O_NOFOLLOW relative to the one before it.
#include "safepy/safepy.hpp"

#include "fd.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace safepy {
namespace {

std::vector<std::string> components(const std::string& path) {
    std::vector<std::string> parts;
    std::size_t start = 0;
    while (start <= path.size()) {
        const std::size_t slash = std::min(path.find('/', start), path.size());
        parts.push_back(path.substr(start, slash - start));
        start = slash + 1;
    }
    return parts;
}

std::string why(const std::string& shown, int error) {
    if (error == ELOOP || error == ENOTDIR) {
        return shown + " is a link or not a directory: refusing to follow it";
    }
    return shown + ": " + std::strerror(error);
}

// Opens (with `create`, makes) the directories of `path` under `root`; the
// last one's descriptor, or an error.
std::optional<std::string> open_parents(int root, const std::string& dir, const std::vector<std::string>& parts,
                                        bool create, Fd& parent) {
    parent.reset(fcntl(root, F_DUPFD_CLOEXEC, 0));
    std::string shown = dir;
    for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
        shown += "/" + parts[i];
        if (create && mkdirat(parent.get(), parts[i].c_str(), 0755) != 0 && errno != EEXIST) {
            return why(shown, errno);
        }
        Fd next(openat(parent.get(), parts[i].c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!next) {
            if (!create && errno == ENOENT) {
                parent.reset();
                return std::nullopt;  // nothing there yet: nothing in the way
            }
            return why(shown, errno);
        }
        parent = std::move(next);
    }
    return std::nullopt;
}

}  // namespace

std::optional<std::string> write_output_files(const std::string& dir, const std::vector<File>& files, bool force) {
    if (dir.empty()) {
        return std::string("the output directory is empty");
    }
    if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
        return why(dir, errno);
    }
    Fd root(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!root) {
        return why(dir, errno);
    }
    // First every path, so that a refusal leaves nothing half-written.
    for (const auto& file : files) {
        if (auto error = check_file_path(file.path)) {
            return file.path + ": " + *error;
        }
        const auto parts = components(file.path);
        Fd parent;
        if (auto error = open_parents(root.get(), dir, parts, false, parent)) {
            return error;
        }
        struct stat info {};
        if (parent && fstatat(parent.get(), parts.back().c_str(), &info, AT_SYMLINK_NOFOLLOW) == 0) {
            const std::string shown = dir + "/" + file.path;
            if (S_ISLNK(info.st_mode)) {
                return shown + " is a link: refusing to write through it";
            }
            if (!S_ISREG(info.st_mode)) {
                return shown + " exists and is not a regular file";
            }
            if (!force) {
                return shown + " exists (--force replaces it)";
            }
        }
    }
    for (const auto& file : files) {
        const auto parts = components(file.path);
        Fd parent;
        if (auto error = open_parents(root.get(), dir, parts, true, parent)) {
            return error;
        }
        const std::string shown = dir + "/" + file.path;
        // Replaced, not truncated: an existing name may be a hard link to a file elsewhere.
        if (force && unlinkat(parent.get(), parts.back().c_str(), 0) != 0 && errno != ENOENT) {
            return why(shown, errno);
        }
        Fd out(openat(parent.get(), parts.back().c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
        if (!out) {
            return why(shown, errno);
        }
        struct stat info {};
        if (fstat(out.get(), &info) != 0 || !S_ISREG(info.st_mode)) {
            return shown + " is not a regular file";
        }
        std::size_t done = 0;
        while (done < file.content.size()) {
            const ssize_t n = write(out.get(), file.content.data() + done, file.content.size() - done);
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n <= 0) {
                return why(shown, errno);
            }
            done += static_cast<std::size_t>(n);
        }
    }
    return std::nullopt;
}

}  // namespace safepy
