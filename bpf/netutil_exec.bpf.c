// SPDX-License-Identifier: Apache-2.0
//
// netutil_exec: the kernel half of osquery-netutil, compiled by bcc at start-up.
//
// It sees every execve/execveat on the host, keeps a small record of every process
// (parent, exec'd file, head of argv) so that user space can name ancestors that have
// already exited, and forwards to user space only the execs that may matter: a
// catalog utility (by comm), or a file run from a writable directory, an fd/memfd or
// a relative path. Everything else costs only the program run, in the kernel.
//
// Portability rules (design.md): tracepoints only (kprobes are often compiled out),
// and no kernel struct field reads, so the program stays correct when the headers bcc
// compiles against are not the running kernel's. Tracepoint arguments and helpers only.
//
// Sizes (FILENAME_LEN, ARGS_BUF, ...) come from probe.py as -D flags: one place.

#include <uapi/linux/bpf.h>

#define CLONE_PARENT 0x00008000
#define CLONE_THREAD 0x00010000
#define AT_EMPTY_PATH 0x1000
#define ENOEXEC 8

// exec_event.flags
#define F_ARGS_TRUNCATED 1   // argv bytes ran out or unreadable (user space adds: fewer args
                             // than argc, or one cut at ARG_MAX_LEN)
#define F_MATCH_COMM 2       // forwarded because comm is in the catalog
#define F_MATCH_PATH 4       // forwarded because of the path (writable prefix, relative, fd)
#define F_NO_ENTER 8         // exec began before the probe attached: no argv
#define F_ARGC_CAPPED 16     // argc counting stopped at ARGC_COUNT_MAX: argc is a lower bound

// ancestry.flags
#define A_EXECED 1           // file/head are from an exec seen by the probe
#define A_FORKED 2           // copied from the parent at fork, no exec since
#define A_SCRIPT_NOEXEC 4    // exec failed with ENOEXEC: a shell is interpreting `file`

// counters (per-CPU array indices, summed by user space)
#define C_EXECS_SEEN 0
#define C_FORWARDED 1
#define C_LOST 2
#define C_FAILED 3
#define C_COUNT 4

struct exec_event {
    u64 ktime_ns;
    u64 cgroup_id;
    u32 pid;          // tgid after exec
    u32 old_tid;      // thread that called exec (differs when a non-leader thread execs)
    u32 ppid;         // parent as recorded at fork; 0 when unknown
    u32 uid;
    u32 gid;
    u32 argc;         // real argument count
    u32 args_size;    // bytes used in args: NUL-terminated strings back to back
    u32 flags;
    char comm[16];
    char filename[FILENAME_LEN];   // as the kernel's exec tracepoint gives it
    char args[ARGS_BUF + ARG_MAX_LEN];
};

struct ancestry {
    u64 ktime_ns;
    u32 ppid;
    u32 uid;
    u32 flags;
    u32 head_len;
    char comm[16];
    char file[FILENAME_LEN];
    char head[HEAD_LEN];           // first arguments, NUL-separated
};

struct pending_head {
    u32 head_len;
    u32 candidate;
    char head[2 * HEAD_LEN];
    char filename[FILENAME_LEN];   // as passed, for the ENOEXEC script case
};

struct comm_key { char name[16]; };
struct prefix_key { u32 prefixlen; char path[PREFIX_LEN]; };

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(counters, u64, C_COUNT);

BPF_HASH(catalog_comms, struct comm_key, u8, 1024);            // filled by user space
BPF_LPM_TRIE(forward_prefixes, struct prefix_key, u8, 64);    // filled by user space

BPF_HASH(live_parents, u32, u32, LIVE_MAX);                   // pid -> parent pid, live processes
BPF_TABLE("lru_hash", u32, struct ancestry, ancestry, ANCESTRY_MAX);

BPF_HASH(pending_head, u32, struct pending_head, PENDING_MAX);  // tid -> argv head, every exec
BPF_HASH(pending_full, u32, struct exec_event, PENDING_MAX);    // tid -> event, candidates only

BPF_PERCPU_ARRAY(event_heap, struct exec_event, 1);
BPF_PERCPU_ARRAY(ancestry_heap, struct ancestry, 1);
BPF_PERCPU_ARRAY(head_heap, struct pending_head, 1);

static __always_inline void count(int which)
{
    u64 *v = counters.lookup(&which);
    if (v)
        (*v)++;
}

static __always_inline u32 current_tgid(void) { return bpf_get_current_pid_tgid() >> 32; }
static __always_inline u32 current_tid(void) { return (u32)bpf_get_current_pid_tgid(); }

// Forward on path: relative, or under a prefix in forward_prefixes (writable dirs, fd paths).
static __always_inline int path_is_candidate(const char *path)
{
    if (path[0] == 0)
        return 1;   // execveat(fd, "", AT_EMPTY_PATH): an fd exec
    if (path[0] != '/')
        return 1;
    struct prefix_key key = {.prefixlen = PREFIX_LEN * 8};
    bpf_probe_read_kernel(&key.path, PREFIX_LEN, path);
    return forward_prefixes.lookup(&key) != 0;
}

// Forward on name: basename truncated to 15 chars, exactly as the kernel sets comm.
static __always_inline int name_is_candidate(const char *path, int len)
{
    // Scan back from the end to the last '/': one exit per iteration keeps the
    // verifier's walk linear (a forward scan remembering the last '/' does not).
    int base = 0;
    for (int k = 1; k < FILENAME_LEN; k++) {
        int i = len - 1 - k;   // len counts the NUL
        if (i < 0)
            break;
        if (path[i & (FILENAME_LEN - 1)] == '/') {
            base = i + 1;
            break;
        }
    }
    struct comm_key key = {};
    for (int j = 0; j < 15; j++) {
        char c = path[(base + j) & (FILENAME_LEN - 1)];
        if (c == 0 || base + j >= FILENAME_LEN)
            break;
        key.name[j] = c;
    }
    return catalog_comms.lookup(&key) != 0;
}

// Count argv pointers from argv[i] on, for the real argc: 16 pointers per read, so that
// the verifier walks 16 times fewer loop iterations.
static __always_inline u32 count_args(const char *const *argv, u32 i, int *capped)
{
    u64 chunk[16];
#pragma clang loop unroll(disable)
    for (int k = 0; k < ARGC_COUNT_MAX / 16; k++) {
        if (bpf_probe_read_user(chunk, sizeof(chunk), &argv[i]))
            break;   // the chunk runs past mapped memory: finish one by one below
#pragma unroll
        for (int j = 0; j < 16; j++) {
            if (!chunk[j])
                return i + j;
        }
        i += 16;
    }
#pragma unroll
    for (int j = 0; j < 16; j++) {
        const char *ptr = 0;
        if (bpf_probe_read_user(&ptr, sizeof(ptr), &argv[i]) || !ptr)
            return i;
        i++;
    }
    *capped = 1;
    return i;
}

// Read argv into ev->args (bounded count and bytes) and count the real argc.
static __always_inline void read_argv(struct exec_event *ev, const char *const *argv)
{
    u32 off = 0;
    int i;
    const char *ptr;

    for (i = 0; i < MAX_ARGS; i++) {
        if (bpf_probe_read_user(&ptr, sizeof(ptr), &argv[i]) || !ptr)
            break;
        if (off >= ARGS_BUF) {
            ev->flags |= F_ARGS_TRUNCATED;
            break;
        }
        int len = bpf_probe_read_user_str(&ev->args[off], ARG_MAX_LEN, ptr);
        if (len <= 0) {
            ev->flags |= F_ARGS_TRUNCATED;
            break;
        }
        // An argument cut at ARG_MAX_LEN shows as one of ARG_MAX_LEN - 1 bytes: user space
        // flags it. Testing it here would double the verifier's paths at every argument.
        off += len;
    }
    ev->args_size = off;
    if (i == MAX_ARGS) {
        // More arguments than we keep: count the rest of the pointers for the real argc.
        int capped = 0;
        i = count_args(argv, i, &capped);
        if (capped)
            ev->flags |= F_ARGC_CAPPED;
    }
    ev->argc = i;
}

// Head of argv for the ancestry map of every process: a few args, HEAD_LEN bytes.
// head has HEAD_LEN bytes of slack so that each read can use the constant HEAD_LEN size.
static __always_inline u32 read_head(char *head, const char *const *argv)
{
    u32 off = 0;
    const char *ptr;
    for (int i = 0; i < HEAD_ARGS; i++) {
        if (off >= HEAD_LEN)
            break;
        if (bpf_probe_read_user(&ptr, sizeof(ptr), &argv[i]) || !ptr)
            break;
        int len = bpf_probe_read_user_str(&head[off], HEAD_LEN, ptr);
        if (len <= 0)
            break;
        off += len;
    }
    return off > HEAD_LEN ? HEAD_LEN : off;
}

// Both exec syscalls: stash what only the caller's memory holds (argv) before exec
// replaces it. The filter decides here whether the full argv is worth reading.
static __always_inline int on_exec_enter(const char *filename, const char *const *argv, int fd_exec)
{
    u32 tid = current_tid();
    int zero = 0;
    struct pending_head *ph = head_heap.lookup(&zero);
    if (!ph)
        return 0;
    int len = bpf_probe_read_user_str(ph->filename, FILENAME_LEN, filename);
    if (len < 0)
        return 0;
    ph->candidate = fd_exec || path_is_candidate(ph->filename) || name_is_candidate(ph->filename, len);

    if (ph->candidate) {
        struct exec_event *ev = event_heap.lookup(&zero);
        if (!ev)
            return 0;
        ev->flags = 0;
        read_argv(ev, argv);
        u32 n = ev->args_size < HEAD_LEN ? ev->args_size : HEAD_LEN;
        ph->head_len = n;
        bpf_probe_read_kernel(ph->head, HEAD_LEN, ev->args);
        pending_full.update(&tid, ev);
    } else {
        ph->head_len = read_head(ph->head, argv);
    }
    pending_head.update(&tid, ph);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_execve)
{
    return on_exec_enter(args->filename, args->argv, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_execveat)
{
    int fd_exec = (args->flags & AT_EMPTY_PATH) != 0;
    return on_exec_enter(args->filename, args->argv, fd_exec);
}

// A failed exec leaves no row. ENOEXEC is the exception worth keeping: the shell now
// interprets the file itself (`./x.sh` without a #! line), so the ancestry of whatever it
// runs next must name that file.
static __always_inline int on_exec_exit(long ret)
{
    u32 tid = current_tid();
    if (ret == -ENOEXEC) {
        u32 tgid = current_tgid();
        struct pending_head *ph = pending_head.lookup(&tid);
        struct ancestry *a = ancestry.lookup(&tgid);
        if (ph && a) {
            bpf_probe_read_kernel(a->file, FILENAME_LEN, ph->filename);
            a->flags = A_SCRIPT_NOEXEC;
        }
    }
    if (ret < 0)
        count(C_FAILED);
    pending_head.delete(&tid);
    pending_full.delete(&tid);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_execve) { return on_exec_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_execveat) { return on_exec_exit(args->ret); }

// The exec succeeded: comm and the final filename are known. Record ancestry for every
// process; forward candidates.
TRACEPOINT_PROBE(sched, sched_process_exec)
{
    int zero = 0;
    u32 tgid = args->pid;
    u32 old_tid = args->old_pid;
    u64 now = bpf_ktime_get_ns();
    u64 uid_gid = bpf_get_current_uid_gid();
    count(C_EXECS_SEEN);

    struct ancestry *a = ancestry_heap.lookup(&zero);
    if (!a)
        return 0;
    u32 *parent = live_parents.lookup(&tgid);
    struct ancestry *prev = ancestry.lookup(&tgid);
    a->ppid = parent ? *parent : (prev ? prev->ppid : 0);
    a->ktime_ns = now;
    a->uid = (u32)uid_gid;
    a->flags = A_EXECED;
    bpf_get_current_comm(a->comm, sizeof(a->comm));
    bpf_probe_read_kernel_str(a->file, FILENAME_LEN, (void *)args + (args->data_loc_filename & 0xFFFF));

    struct pending_head *ph = pending_head.lookup(&old_tid);
    a->head_len = ph ? ph->head_len : 0;
    if (ph)
        bpf_probe_read_kernel(a->head, HEAD_LEN, ph->head);
    ancestry.update(&tgid, a);

    struct exec_event *ev = pending_full.lookup(&old_tid);
    u32 match = 0;
    struct comm_key ck = {};
    __builtin_memcpy(ck.name, a->comm, 16);
    if (catalog_comms.lookup(&ck))
        match |= F_MATCH_COMM;
    if ((ph && ph->candidate) || path_is_candidate(a->file))
        match |= F_MATCH_PATH;
    if (match) {
        if (!ev) {
            // Exec entered before the probe attached, or an exec the entry filter did
            // not expect (comm differs from the basename): forward what we have.
            ev = event_heap.lookup(&zero);
            if (!ev)
                goto out;
            ev->flags = F_ARGS_TRUNCATED | (ph ? 0 : F_NO_ENTER);
            ev->args_size = a->head_len;
            ev->argc = 0;
            bpf_probe_read_kernel(ev->args, HEAD_LEN, a->head);
        }
        ev->ktime_ns = now;
        ev->cgroup_id = bpf_get_current_cgroup_id();
        ev->pid = tgid;
        ev->old_tid = old_tid;
        ev->ppid = a->ppid;
        ev->uid = (u32)uid_gid;
        ev->gid = uid_gid >> 32;
        ev->flags |= match;
        __builtin_memcpy(ev->comm, a->comm, 16);
        bpf_probe_read_kernel(ev->filename, FILENAME_LEN, a->file);
        u32 size = ev->args_size;
        if (size > ARGS_BUF + ARG_MAX_LEN)
            size = ARGS_BUF + ARG_MAX_LEN;
        if (events.ringbuf_output(ev, offsetof(struct exec_event, args) + size, 0))
            count(C_LOST);
        else
            count(C_FORWARDED);
    }
out:
    pending_head.delete(&old_tid);
    pending_full.delete(&old_tid);
    return 0;
}

// A new process (not a thread): remember its parent, and give it its parent's exec'd
// file and argv head until it execs itself (a subshell running a command is the fork
// of the script that holds it).
TRACEPOINT_PROBE(task, task_newtask)
{
    if (args->clone_flags & CLONE_THREAD)
        return 0;
    int zero = 0;
    u32 child = args->pid;
    u32 parent = current_tgid();
    struct ancestry *pa = ancestry.lookup(&parent);
    if (args->clone_flags & CLONE_PARENT) {
        // The child becomes a sibling of the caller.
        u32 *gp = live_parents.lookup(&parent);
        parent = gp ? *gp : (pa ? pa->ppid : 0);
    }
    live_parents.update(&child, &parent);

    struct ancestry *a = ancestry_heap.lookup(&zero);
    if (!a)
        return 0;
    if (pa) {
        bpf_probe_read_kernel(a, sizeof(*a), pa);
    } else {
        a->head_len = 0;
        a->flags = 0;
        a->file[0] = 0;
        a->head[0] = 0;
        bpf_get_current_comm(a->comm, sizeof(a->comm));
    }
    a->ppid = parent;
    a->ktime_ns = bpf_ktime_get_ns();
    a->uid = (u32)bpf_get_current_uid_gid();
    a->flags = (a->flags & ~A_EXECED) | A_FORKED;
    ancestry.update(&child, a);
    return 0;
}

// Process gone: forget its live parent link. Its ancestry entry stays (LRU) so that
// children reported later can still name it.
TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if ((u32)id == tgid)
        live_parents.delete(&tgid);
    return 0;
}
