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

// image.flags
#define I_SCRIPT_NOEXEC 1    // exec failed with ENOEXEC: a shell is interpreting `file`

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

// Every process has one entry in `procs`, written once (at fork) and then changed in
// place: map updates are the expensive part of a program run (about 600 ns each on a
// retpoline VM), in-place writes through a lookup are not. The entry holds
//   lineage  parent and fork time, written at fork;
//   image    the file exec'd and the head of argv, committed when an exec succeeds;
//   pending  what an exec in progress passed (its argv head), written at syscall entry,
//            committed at exec or dropped when the exec fails.
// A process that forked and has not exec'd runs its parent's image; user space resolves
// that (image time 0 or older than the fork). The LRU keeps exited processes, so that
// children reported later can still name them; a fork overwrites a reused pid.
struct proc {
    u64 fork_ktime_ns;             // 0: forked before the probe attached
    u32 ppid;
    u32 flags;                     // I_* for the image
    u64 ktime_ns;                  // exec time of the image; 0: no exec seen
    u32 uid;
    u32 head_len;
    char comm[16];
    char file[FILENAME_LEN];       // the file exec'd: for a script, the script
    char head[HEAD_LEN];           // first arguments, NUL-separated
    const char *pend_filename;     // caller's pointer, still valid if the exec fails
    u32 pend_tid;                  // thread whose exec is pending; 0: none
    u32 pend_candidate;
    u32 pend_head_len;
    u32 pad;
    char pend_head[2 * HEAD_LEN];  // HEAD_LEN of slack for constant-size reads
};

struct comm_key { char name[16]; };
struct prefix_key { u32 prefixlen; char path[PREFIX_LEN]; };

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(counters, u64, C_COUNT);

BPF_HASH(catalog_comms, struct comm_key, u8, 1024);            // filled by user space
BPF_LPM_TRIE(forward_prefixes, struct prefix_key, u8, 64);    // filled by user space

BPF_TABLE("lru_hash", u32, struct proc, procs, ANCESTRY_MAX);   // pid -> struct proc

// A candidate's full argv between syscall entry and exec, keyed by thread. LRU, so that
// the entries of execs that die mid-way cannot fill the map.
BPF_TABLE("lru_hash", u32, struct exec_event, pending_full, PENDING_MAX);

BPF_PERCPU_ARRAY(event_heap, struct exec_event, 1);
BPF_PERCPU_ARRAY(proc_heap, struct proc, 1);          // a zeroed entry to insert from
BPF_PERCPU_ARRAY(path_heap, struct prefix_key, 1);   // filename as passed, then lookup key

static __always_inline void count(int which)
{
    u64 *v = counters.lookup(&which);
    if (v)
        (*v)++;
}

static __always_inline u32 current_tid(void) { return (u32)bpf_get_current_pid_tgid(); }

// The entry of pid, created (zeroed: parent unknown) for a process older than the probe.
static __always_inline struct proc *proc_of(u32 pid)
{
    struct proc *p = procs.lookup(&pid);
    if (p)
        return p;
    int zero = 0;
    struct proc *blank = proc_heap.lookup(&zero);
    if (!blank)
        return 0;
    procs.update(&pid, blank);
    return procs.lookup(&pid);
}

// Forward on path: relative, or under a prefix in forward_prefixes (writable dirs, fd
// paths). key->path holds the path's first PREFIX_LEN bytes.
static __always_inline int path_is_candidate(struct prefix_key *key)
{
    if (key->path[0] == 0)
        return 1;   // execveat(fd, "", AT_EMPTY_PATH): an fd exec
    if (key->path[0] != '/')
        return 1;
    key->prefixlen = PREFIX_LEN * 8;
    u8 *hit = forward_prefixes.lookup(key);
    return hit ? *hit : 0;   // read the value: clang must not fold the pointer into flags
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
        u32 at = off;
        asm volatile("" : "+r"(at));   // hide the bound from clang so the mask stays for the verifier
        int len = bpf_probe_read_user_str(&head[at & (HEAD_LEN - 1)], HEAD_LEN, ptr);
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
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tid = (u32)pid_tgid;
    int zero = 0;
    struct prefix_key *pk = path_heap.lookup(&zero);
    struct exec_event *ev = event_heap.lookup(&zero);
    struct proc *p = proc_of(pid_tgid >> 32);
    if (!pk || !ev || !p)
        return 0;
    // The filename goes into the event buffer, whose first FILENAME_LEN bytes are free
    // here; the prefix key gets a copy of its head.
    int len = bpf_probe_read_user_str(ev->filename, FILENAME_LEN, filename);
    if (len < 0)
        return 0;
    bpf_probe_read_kernel(pk->path, PREFIX_LEN, ev->filename);
    u32 candidate = fd_exec || path_is_candidate(pk) || name_is_candidate(ev->filename, len);

    if (candidate) {
        ev->flags = 0;
        read_argv(ev, argv);
        p->pend_head_len = ev->args_size < HEAD_LEN ? ev->args_size : HEAD_LEN;
        bpf_probe_read_kernel(p->pend_head, HEAD_LEN, ev->args);
        pending_full.update(&tid, ev);
    } else {
        p->pend_head_len = read_head(p->pend_head, argv);
    }
    p->pend_filename = filename;
    p->pend_candidate = candidate;
    p->pend_tid = tid;
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
// runs next must name that file. A successful exec already cleaned up: return at once.
static __always_inline int on_exec_exit(long ret)
{
    if (ret >= 0)
        return 0;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tid = (u32)pid_tgid;
    u32 tgid = pid_tgid >> 32;
    count(C_FAILED);
    struct proc *p = procs.lookup(&tgid);
    if (!p || p->pend_tid != tid)
        return 0;
    if (ret == -ENOEXEC) {
        p->ktime_ns = bpf_ktime_get_ns();
        p->uid = (u32)bpf_get_current_uid_gid();
        p->flags = I_SCRIPT_NOEXEC;
        p->head_len = p->pend_head_len;
        bpf_get_current_comm(p->comm, sizeof(p->comm));
        bpf_probe_read_user_str(p->file, FILENAME_LEN, p->pend_filename);
        bpf_probe_read_kernel(p->head, HEAD_LEN, p->pend_head);
    }
    if (p->pend_candidate)
        pending_full.delete(&tid);
    p->pend_tid = 0;
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_execve) { return on_exec_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_execveat) { return on_exec_exit(args->ret); }

// The exec succeeded: comm and the final filename are known. Commit the image of every
// process (in place); forward candidates.
TRACEPOINT_PROBE(sched, sched_process_exec)
{
    int zero = 0;
    u32 tgid = args->pid;
    u32 old_tid = args->old_pid;
    count(C_EXECS_SEEN);

    struct proc *p = proc_of(tgid);
    if (!p)
        return 0;
    int entered = p->pend_tid == old_tid;   // else the exec began before the probe attached
    u32 candidate = entered && p->pend_candidate;
    u64 uid_gid = bpf_get_current_uid_gid();
    p->ktime_ns = bpf_ktime_get_ns();
    p->uid = (u32)uid_gid;
    p->flags = 0;
    bpf_get_current_comm(p->comm, sizeof(p->comm));
    bpf_probe_read_kernel_str(p->file, FILENAME_LEN, (void *)args + (args->data_loc_filename & 0xFFFF));
    p->head_len = entered ? p->pend_head_len : 0;
    if (entered)
        bpf_probe_read_kernel(p->head, HEAD_LEN, p->pend_head);
    p->pend_tid = 0;

    u32 match = 0;
    struct comm_key ck = {};
    __builtin_memcpy(ck.name, p->comm, 16);
    if (catalog_comms.lookup(&ck))
        match |= F_MATCH_COMM;
    if (candidate) {
        match |= F_MATCH_PATH;
    } else if (!entered) {
        // Exec entered before the probe attached: judge the path from the tracepoint.
        struct prefix_key *pk = path_heap.lookup(&zero);
        if (pk) {
            bpf_probe_read_kernel(pk->path, PREFIX_LEN, p->file);
            if (path_is_candidate(pk))
                match |= F_MATCH_PATH;
        }
    }
    if (!match)
        return 0;
    struct exec_event *ev = candidate ? pending_full.lookup(&old_tid) : 0;
    if (!ev) {
        // No argv was read at entry (exec entered before attach, or comm differs from
        // the basename): forward the argv head.
        ev = event_heap.lookup(&zero);
        if (!ev)
            goto out;
        ev->flags = F_ARGS_TRUNCATED | (entered ? 0 : F_NO_ENTER);
        ev->args_size = p->head_len;
        ev->argc = 0;
        bpf_probe_read_kernel(ev->args, HEAD_LEN, p->head);
    }
    ev->ktime_ns = p->ktime_ns;
    ev->cgroup_id = bpf_get_current_cgroup_id();
    ev->pid = tgid;
    ev->old_tid = old_tid;
    ev->ppid = p->ppid;
    ev->uid = (u32)uid_gid;
    ev->gid = uid_gid >> 32;
    ev->flags |= match;
    __builtin_memcpy(ev->comm, p->comm, 16);
    bpf_probe_read_kernel(ev->filename, FILENAME_LEN, p->file);
    u32 size = ev->args_size;
    if (size > ARGS_BUF + ARG_MAX_LEN)
        size = ARGS_BUF + ARG_MAX_LEN;
    if (events.ringbuf_output(ev, offsetof(struct exec_event, args) + size, 0))
        count(C_LOST);
    else
        count(C_FORWARDED);
out:
    if (candidate)
        pending_full.delete(&old_tid);
    return 0;
}

// A new process (not a thread): its one map write. Parent and birth time; no image yet
// (it runs its parent's until it execs). Nothing is deleted at exit: the LRU keeps
// exited processes so that children reported later can still name them.
TRACEPOINT_PROBE(task, task_newtask)
{
    if (args->clone_flags & CLONE_THREAD)
        return 0;
    int zero = 0;
    struct proc *p = proc_heap.lookup(&zero);
    if (!p)
        return 0;
    u32 child = args->pid;
    p->fork_ktime_ns = bpf_ktime_get_ns();
    p->ppid = bpf_get_current_pid_tgid() >> 32;
    if (args->clone_flags & CLONE_PARENT) {
        // The child becomes a sibling of the caller.
        struct proc *up = procs.lookup(&p->ppid);
        p->ppid = up ? up->ppid : 0;
    }
    procs.update(&child, p);
    p->fork_ktime_ns = 0;   // proc_heap stays a blank entry for proc_of()
    p->ppid = 0;
    return 0;
}
