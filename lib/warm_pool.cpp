#include "warm_pool.hpp"

#include "warm_slot.hpp"
#include "warm_template.hpp"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

namespace safepy {
namespace {

using Clock = std::chrono::steady_clock;

}  // namespace

std::string template_payload(std::string_view contain_library, std::string_view bpf) {
    std::string payload(8, '\0');
    std::uint64_t length = contain_library.size();
    for (int i = 0; i < 8; ++i) {
        payload[static_cast<std::size_t>(i)] = static_cast<char>((length >> (8 * i)) & 0xff);
    }
    payload.append(contain_library);
    payload.append(bpf);
    return payload;
}

// One template: a jail with its own host uid. Its children share that uid,
// so it serves one run at a time.
struct Template {
    std::optional<UidLease> uid;  // held for the pool's life; empty when not root
    TemplateProcess process;
    // Under WarmPool::Impl::mutex:
    std::deque<std::unique_ptr<Slot>> ready;
    bool up = false;
    bool busy = false;  // a run holds this template's uid
    // A run on it ended without its exit report: what is left of it may still
    // hold the uid, so the template is replaced before it serves again.
    bool condemned = false;
    std::string last_error = "the warm template is starting";
};

struct WarmPool::Impl {
    WarmSettings settings;

    mutable std::mutex mutex;
    mutable std::condition_variable changed;
    std::vector<std::unique_ptr<Template>> templates;
    std::deque<std::unique_ptr<Slot>> retired;  // finished runs, removed off the request path
    // Cgroups of finished runs, recycled for the next prepared children.
    std::vector<SpareCgroup> spares;
    std::size_t max_spares = 2;
    bool stopping = false;
    std::size_t per_template = 1;  // children kept prepared by each template
    std::thread manager;

    void set_error(Template& t, std::string error) {
        std::lock_guard lock(mutex);
        t.up = false;
        t.last_error = std::move(error);
        changed.notify_all();
    }

    void stop_template(Template& t) {
        t.process.stop();
        std::deque<std::unique_ptr<Slot>> dropped;
        {
            std::lock_guard lock(mutex);
            dropped.swap(t.ready);
            t.up = false;
        }
        // Removing their cgroups waits for the kernel: never under the lock
        // that every request takes.
        dropped.clear();
    }

    bool start_template(Template& t, std::string& error) {
        SpawnSpec spec = settings.template_spawn;
        if (t.uid) {
            spec.uid = spec.gid = t.uid->uid();
            spec.argv = settings.template_argv(t.uid->uid());
        }
        return t.process.start(std::move(spec), settings.cgroups, error);
    }

    std::unique_ptr<Slot> make_slot(Template& t, std::string& error) {
        SpareCgroup spare;
        {
            std::lock_guard lock(mutex);
            if (!spares.empty()) {
                spare = std::move(spares.back());
                spares.pop_back();
            }
        }
        return safepy::make_slot(t.process, settings.cgroups, settings.defaults, std::move(spare), error);
    }

    // Off the request path: a finished run's cgroup is recycled when it is
    // empty and its counters start over, else removed with the slot.
    void retire(std::deque<std::unique_ptr<Slot>>& finished) {
        for (auto& slot : finished) {
            if (!slot->cgroup || !settings.cgroups || !settings.cgroups->recyclable()) {
                continue;
            }
            {
                std::lock_guard lock(mutex);
                if (spares.size() >= max_spares) {
                    continue;
                }
            }
            // One that cannot be reused is removed with its slot below.
            if (std::string why; slot->cgroup->recycle(why)) {
                std::lock_guard lock(mutex);
                spares.push_back(SpareCgroup{std::move(slot->cgroup), slot->cgroup_limits});
            }
        }
        finished.clear();  // removes the other cgroups (their processes are already gone)
    }

    // Keeps one template running and prepared; false when it failed and
    // needs a pause before the next try.
    bool tend(Template& t) {
        if (!t.uid && settings.uids) {
            set_error(t, "warm mode: no sandbox uid for this template");
            return false;
        }
        bool condemned = false;
        {
            std::lock_guard lock(mutex);
            condemned = std::exchange(t.condemned, false);
        }
        if (condemned || !t.process.alive()) {
            stop_template(t);
            std::string error;
            if (!start_template(t, error)) {
                set_error(t, "the warm template could not be started: " + error);
                return false;
            }
        }
        {
            std::lock_guard lock(mutex);
            if (t.ready.size() >= per_template) {
                return true;
            }
        }
        std::string error;
        auto slot = make_slot(t, error);
        if (!slot) {
            const std::string& log = t.process.collect_log();
            set_error(t, error + (log.empty() ? "" : "; template log: " + log));
            // A child failed to get ready: start over with a new template.
            stop_template(t);
            return false;
        }
        std::lock_guard lock(mutex);
        t.ready.push_back(std::move(slot));
        t.up = true;
        changed.notify_all();
        return true;
    }

    bool all_prepared() const {
        for (const auto& t : templates) {
            if (!t->up || t->ready.size() < per_template) {
                return false;
            }
        }
        return true;
    }

    void manage() {
        auto backoff = std::chrono::milliseconds(250);
        for (;;) {
            std::deque<std::unique_ptr<Slot>> finished;
            {
                std::lock_guard lock(mutex);
                if (stopping) {
                    return;
                }
                finished.swap(retired);
            }
            retire(finished);
            bool failed = false;
            for (auto& t : templates) {
                failed = !tend(*t) || failed;
            }
            std::unique_lock lock(mutex);
            if (failed) {
                changed.wait_for(lock, backoff, [this] { return stopping; });
                backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
                continue;
            }
            backoff = std::chrono::milliseconds(250);
            if (all_prepared()) {
                changed.wait_for(lock, std::chrono::milliseconds(500),
                                 [this] { return stopping || !all_prepared() || !retired.empty(); });
            }
        }
    }

    bool any_up() const {
        for (const auto& t : templates) {
            if (t->up) {
                return true;
            }
        }
        return false;
    }

    // A free template (no run holds its uid) and a prepared child of it, or,
    // while the template is up, one made here. Waits while every template is busy.
    std::unique_ptr<Slot> take_slot(Template*& taken, std::string& error) {
        std::unique_lock lock(mutex);
        if (!any_up()) {
            // Give a starting template a moment before failing the run.
            changed.wait_for(lock, std::chrono::seconds(5), [this] { return stopping || any_up(); });
        }
        for (;;) {
            if (stopping || !any_up()) {
                error = stopping ? "the warm pool is stopping" : templates.front()->last_error;
                return nullptr;
            }
            Template* free = nullptr;
            for (auto& t : templates) {
                if (t->up && !t->busy && (!free || (free->ready.empty() && !t->ready.empty()))) {
                    free = t.get();
                }
            }
            if (free) {
                free->busy = true;
                taken = free;
                if (!free->ready.empty()) {
                    auto slot = std::move(free->ready.front());
                    free->ready.pop_front();
                    changed.notify_all();
                    return slot;
                }
                break;
            }
            changed.wait(lock);
        }
        lock.unlock();
        auto slot = make_slot(*taken, error);
        if (!slot) {
            release(*taken, nullptr);
        }
        return slot;
    }

    // The run on `t` is over: its slot goes to the manager for clean-up.
    void release(Template& t, std::unique_ptr<Slot> slot, bool lost = false) {
        std::lock_guard lock(mutex);
        if (slot) {
            retired.push_back(std::move(slot));
        }
        if (lost) {
            t.condemned = true;
            t.up = false;  // no run takes it until the manager has replaced it
        }
        t.busy = false;
        changed.notify_all();
    }
};

WarmPool::WarmPool(WarmSettings settings) : m_impl(std::make_unique<Impl>()) {
    m_impl->settings = std::move(settings);
    const std::size_t count = std::max<std::size_t>(m_impl->settings.templates, 1);
    m_impl->per_template = std::max<std::size_t>(1, (m_impl->settings.pool_size + count - 1) / count);
    m_impl->max_spares = count * m_impl->per_template + 1;
    for (std::size_t i = 0; i < count; ++i) {
        auto t = std::make_unique<Template>();
        if (m_impl->settings.uids) {
            std::string error;
            t->uid = m_impl->settings.uids->acquire(error);
            if (!t->uid) {
                t->last_error = "warm mode: " + error;
            }
        }
        m_impl->templates.push_back(std::move(t));
    }
    m_impl->manager = std::thread([impl = m_impl.get()] { impl->manage(); });
}

WarmPool::~WarmPool() {
    {
        std::lock_guard lock(m_impl->mutex);
        m_impl->stopping = true;
        m_impl->changed.notify_all();
    }
    m_impl->manager.join();
    m_impl->retired.clear();
    m_impl->spares.clear();
    for (auto& t : m_impl->templates) {
        m_impl->stop_template(*t);
    }
}

std::string WarmPool::state() const {
    std::lock_guard lock(m_impl->mutex);
    std::size_t prepared = 0, up = 0;
    for (const auto& t : m_impl->templates) {
        prepared += t->ready.size();
        up += t->up ? 1 : 0;
    }
    if (up > 0) {
        return "ready (" + std::to_string(up) + " of " + std::to_string(m_impl->templates.size()) +
               " templates up, " + std::to_string(prepared) + " prepared)";
    }
    return m_impl->templates.front()->last_error;
}

bool WarmPool::wait_ready(std::chrono::milliseconds timeout) const {
    std::unique_lock lock(m_impl->mutex);
    return m_impl->changed.wait_for(lock, timeout, [this] { return m_impl->any_up(); });
}

WarmRun WarmPool::run(const Request& request, int cancel_fd) {
    WarmRun run;
    std::unique_ptr<Slot> slot;
    Template* owner = nullptr;
    // Whatever happens below, the template is free again when this returns.
    bool lost = false;
    auto give_back = [this, &owner, &slot, &lost] {
        if (owner) {
            m_impl->release(*owner, std::move(slot), lost);
            owner = nullptr;
        }
    };
    struct Guard {
        decltype(give_back)& done;
        ~Guard() { done(); }
    } guard{give_back};
    Clock::time_point started;
    SlotPipes pipes;
    bool delivered = false;
    // A child may have died since it was prepared: try a second one.
    for (int attempt = 0; attempt < 2 && !delivered; ++attempt) {
        std::string error;
        give_back();
        slot = m_impl->take_slot(owner, error);
        if (!slot) {
            run.spawned.spawn_error = "warm mode: " + error;
            return run;
        }
        if (slot->cgroup && !(slot->cgroup_limits == request.limits)) {
            if (!slot->cgroup->set_limits(request.limits, error)) {
                run.spawned.spawn_error = error;
                return run;
            }
            slot->cgroup_limits = request.limits;
        }
        const bool rlimit_memory = m_impl->settings.cgroups == nullptr;
        delivered = start_run(*slot, request, rlimit_memory, pipes, error);
        // The wall clock starts when the child has its run, not while a
        // slot was being found: that time is not the script's.
        started = Clock::now();
    }
    if (!delivered) {
        run.spawned.spawn_error = "warm mode: prepared children died before the run could start";
        return run;
    }

    WarmChild child(slot->pidfd.get(), slot->socket.get(), slot->cgroup.get());
    RunChannels channels;
    channels.pidfd = std::move(slot->pidfd);
    channels.out = std::move(pipes.out);
    channels.err = std::move(pipes.err);
    channels.result = std::move(pipes.result);
    channels.started = started;
    const RunCgroup* cgroup = slot->cgroup.get();
    run.spawned = supervise(child, std::move(channels), request.limits, cancel_fd);
    lost = !run.spawned.spawn_error.empty();
    if (cgroup) {
        run.usage = cgroup->usage();
    }
    // The supervisor killed whatever was left in the cgroup; removing the empty
    // directories is the manager's job (give_back hands the slot over).
    return run;
}

}  // namespace safepy
