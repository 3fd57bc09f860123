// SPDX-License-Identifier: Apache-2.0
//
// netutil_exec: the kernel half of osquery-netutil, compiled by bcc at start-up.
//
// It sees every exec on the host, keeps a small record of every process (parent, exec'd
// file, head of argv) so that user space can name ancestors that have already exited,
// and forwards to user space only the execs that may matter: a catalog utility (by
// name), or a file run from a writable directory, an fd/memfd or a relative path.
// Everything else costs only the program run, in the kernel.
//
// Two modes, chosen by probe.py at load (docs/design.md, "The kernel side"):
//   PROBE_BTF    raw tracepoints on sched_process_exec and task_newtask only. argv is
//                read from the new image (mm->arg_start..arg_end) once the exec has
//                succeeded. No syscall tracepoint: attaching one puts every syscall of
//                every process on the slow path. Struct fields are read only as
//                base + OFF_X, with offsets probe.py took from the running kernel's BTF
//                (never `->`: the headers bcc compiles against are another kernel's).
//   otherwise    classic tracepoints, no struct reads: argv at syscall entry, the
//                outcome at syscall exit, the commit at sched_process_exec.
// kprobes are often compiled out (they are here): neither mode uses them.
//
// Sizes (FILENAME_LEN, ARGS_BUF, ...) and offsets come from probe.py as -D flags. This
// file holds what both modes share; each mode's programs are in netutil_exec_btf.bpf.c and
// netutil_exec_tracepoint.bpf.c, which probe.py appends (one program, three files).

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
#define F_SCRIPT 32          // btf mode: a #! script; argv is the kernel's (interpreter first)
#define F_PATH_RELATIVE 64   // with F_MATCH_PATH or F_MATCH_SCRIPT: the path is relative (its directory is not known here)
#define F_MATCH_SCRIPT 128   // forwarded because an interpreter was started on a script by a path that
                             // F_MATCH_PATH would forward (sh /tmp/x.sh, bash x.sh): an origin
#define F_UNJUDGED 256       // btf mode: forwarded because the image has no content verdict yet
#define F_MATCH_CONTENT 512  // btf mode: forwarded because the image's verdict says it is a utility
#define F_TRACK_PENDING 1024 // btf mode: the exec tracks until user space judges it (F_UNJUDGED, see `track`)

// catalog_comms values: a catalog name (or busybox, a loader), an interpreter (sh, python3...)
#define N_CATALOG 1
#define N_INTERPRETER 2

// The origin of a lineage: the nearest exec suspicious by its place (F_MATCH_PATH, F_MATCH_SCRIPT), as
// (pid, exec time). Set at that exec, inherited by every child at fork and kept across the
// child's own execs, so that a row names it however deep the chain and whatever the pid
// exec'd since (a trampoline that waits, then execs the utility). A relative path is a weak
// origin (./x may be anywhere): it never replaces a placed one (a writable directory, an fd
// or memfd), which replaces any.

// image.flags
#define I_SCRIPT_NOEXEC 1    // exec failed with ENOEXEC: a shell is interpreting `file`
#define I_SCRIPT 4           // btf mode: `file` is a #! script; the head starts with its interpreter

// counters (per-CPU array indices, summed by user space)
#define C_EXECS_SEEN 0
#define C_FORWARDED 1
#define C_LOST 2
#define C_FAILED 3
#define C_SOCK_EVENTS 4   // socket events handed over (netutil_sock.bpf.c)
#define C_SOCK_LOST 5     // socket events dropped: their ring buffer was full
#define C_SOCK_OVER_BUDGET 6     // socket events not sent: the process had spent its budget
#define C_SOCK_UNREAD 7   // sends whose destination or DNS question could not be read (netutil_sock_send.bpf.c)
#define C_COUNT 8

struct exec_event {
    u64 ktime_ns;
    u64 cgroup_id;
    u64 origin_ktime_ns;   // the lineage's origin (see above): its exec time, 0 for none
    u64 ino;          // btf mode: the executed image's inode, as the exec opened it; 0 otherwise
    u64 image_sb;     // btf mode: its superblock, a kernel address: half of its verdict's key
    u64 ctime_sec;    // btf mode: its change time, which its verdict is given for
    u32 ctime_nsec;
    u32 pad;
    u32 dev;          // btf mode: its superblock's device (kernel encoding: major << 20 | minor)
    u32 origin_pid;
    u64 track_ktime_ns;       // the lineage's tracked exec after this one (see `track` below)
    u64 track_prev_ktime_ns;  // and before it: user space links a row-less exec to the one it inherited
    u32 track_pid;
    u32 track_prev_pid;
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

// Every process has one slot in `procs`, an array indexed by pid modulo its size: the
// slot is claimed at fork and then changed in place. No map update runs per exec or
// fork: inserting into a hash map (an LRU above all) cost 950 ns per fork here, more
// than all the rest of a fork's program; an array slot costs a bounds check.
// The array keeps exited processes until their slot is claimed again, that is, until
// ANCESTRY_MAX more pids were handed out: the horizon an LRU of that size would have,
// since the kernel hands out pids in increasing order. A slot holds
//   lineage  pid, parent and fork time, written at fork;
//   image    the file exec'd and the head of argv, committed when an exec succeeds;
//   pending  tracepoint mode: what an exec in progress passed (its argv head), written
//            at syscall entry, committed at exec or dropped when the exec fails. btf
//            mode writes the new head there too and commits it by the same swap, so
//            that user space never reads a head half written.
// A process that forked and has not exec'd runs its parent's image; user space resolves
// that (image time 0). A slot whose pid differs is another process's: user space then
// reads /proc, where a live process still is.
struct proc {
    // The first 24 bytes are all a socket program reads of an untracked process (whose
    // slot it is, its origin and track): most often one cache line (bench/sockets.py).
    u32 pid;                       // owner of the slot; 0: free
    u32 ppid;
    u64 origin_ktime_ns;           // the lineage's origin, inherited at fork; 0: none
    u64 track_ktime_ns;            // the lineage's tracked exec, inherited at fork; 0: none
    u64 fork_ktime_ns;             // 0: forked before the probe attached
    u64 ktime_ns;                  // exec time of the image; 0: no exec seen
    u32 origin_pid;
    u32 track_pid;
    u32 origin_weak;               // 1: the origin is a relative-path exec
    u32 flags;                     // I_* for the image
    u32 uid;
    u32 sock_budget;               // socket events this process may still send (netutil_sock.bpf.c)
    u32 track_pending;             // 1: the track is an exec user space has not judged yet (F_TRACK_PENDING)
    u32 head_len;
    u32 pend_head_len;
    char comm[16];
    u32 file_key;                  // with file, a path_buf: the filter's trie looks file up in place
    char file[FILENAME_LEN];       // the file exec'd: for a script, the script
    const char *pend_filename;     // caller's pointer, still valid if the exec fails
    u32 pend_tid;                  // thread whose exec is pending; 0: none
    u32 pend_match;                // F_MATCH_* of the pending exec; 0: not forwarded
    u32 cur;                       // head cur & 1 of the two is the image's, the other the pending exec's
    // First arguments, NUL-separated. Committing an exec swaps the two (cur ^= 1) instead
    // of copying. HEAD_LEN of slack each, for constant-size reads.
    char heads[2 * 2 * HEAD_LEN];  // flat: bcc's Python types get 2-D arrays wrong
};

struct comm_key { char name[16]; };
struct prefix_key { u32 prefixlen; char path[PREFIX_LEN]; };
// A path with room for a prefix_key's header: the LPM lookup reads only its first
// sizeof(struct prefix_key) bytes, so the path read needs no copy to become a key.
struct path_buf { u32 prefixlen; char path[FILENAME_LEN]; };
_Static_assert(offsetof(struct proc, file) == offsetof(struct proc, file_key) + sizeof(u32),
               "a slot's file_key and file must make a struct path_buf");
_Static_assert(offsetof(struct proc, track_ktime_ns) == 16, "what socket programs read of an untracked process's slot: its first 24 bytes");

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(counters, u64, C_COUNT);

BPF_HASH(catalog_comms, struct comm_key, u8, 1024);            // N_* bits, filled by user space
BPF_LPM_TRIE(forward_prefixes, struct prefix_key, u8, 64);    // filled by user space
// Quick rejections, so that most execs skip the lookups above (an array slot costs a few
// ns, a hash or trie lookup 150-250): the first two bytes of each catalog name, and the
// byte after the leading '/' of each forwarded prefix (/usr/... and /bin/... start none).
// name_heads holds the N_* bits of the names it starts.
BPF_ARRAY(name_heads, u8, 65536);                              // filled by user space
BPF_ARRAY(prefix_heads, u8, 256);                              // filled by user space

BPF_ARRAY(procs, struct proc, ANCESTRY_MAX);   // pid % ANCESTRY_MAX -> struct proc

BPF_PERCPU_ARRAY(event_heap, struct exec_event, 1);
BPF_PERCPU_ARRAY(path_heap, struct path_buf, 1);   // filename as passed, also the lookup key

static __always_inline void count(int which)
{
    u64 *v = counters.lookup(&which);
    if (v)
        (*v)++;
}

static __always_inline char *image_head(struct proc *p) { return &p->heads[(p->cur & 1) * 2 * HEAD_LEN]; }
static __always_inline char *pending_head(struct proc *p) { return &p->heads[((p->cur & 1) ^ 1) * 2 * HEAD_LEN]; }

static __always_inline struct proc *slot_of(u32 pid)
{
    u32 slot = pid & (ANCESTRY_MAX - 1);
    return procs.lookup(&slot);
}

// Claim pid's slot: whatever it held (an older process with the same slot) is forgotten.
static __always_inline void claim(struct proc *p, u32 pid, u32 ppid, u64 fork_ktime_ns)
{
    p->pid = pid;
    p->ppid = ppid;
    p->fork_ktime_ns = fork_ktime_ns;
    p->ktime_ns = 0;
    p->flags = 0;
    p->head_len = 0;
    p->pend_tid = 0;
    p->origin_ktime_ns = 0;
    p->origin_pid = 0;
    p->origin_weak = 0;
    p->track_ktime_ns = 0;
    p->track_pid = 0;
    p->sock_budget = 0;
    p->track_pending = 0;
}

// The slot of pid, claimed (parent unknown) for a process older than the probe, or one
// whose slot a newer process took.
static __always_inline struct proc *proc_of(u32 pid)
{
    struct proc *p = slot_of(pid);
    if (p && p->pid != pid)
        claim(p, pid, 0, 0);
    return p;
}

// Forward on path: relative, or under a prefix in forward_prefixes (writable dirs, fd
// paths). Only the first PREFIX_LEN bytes of the path take part in the lookup. Returns
// the F_MATCH_PATH and F_PATH_RELATIVE bits.
static __always_inline u32 path_match(struct path_buf *buf)
{
    if (buf->path[0] == 0)
        return F_MATCH_PATH;   // execveat(fd, "", AT_EMPTY_PATH): an fd exec
    if (buf->path[0] != '/')
        return F_MATCH_PATH | F_PATH_RELATIVE;
    u32 second = (u8)buf->path[1];
    u8 *head = prefix_heads.lookup(&second);
    if (!head || !*head)
        return 0;
    buf->prefixlen = PREFIX_LEN * 8;
    u8 *hit = forward_prefixes.lookup((struct prefix_key *)buf);
    return hit && *hit ? F_MATCH_PATH : 0;   // read the value: clang must not fold the pointer into flags
}

// A committed exec suspicious by place becomes the origin of its lineage (see F_PATH_RELATIVE).
static __always_inline void mark_origin(struct proc *p, u32 match)
{
    if (!(match & (F_MATCH_PATH | F_MATCH_SCRIPT)))
        return;
    u32 weak = (match & F_PATH_RELATIVE) != 0;
    if (weak && p->origin_ktime_ns && !p->origin_weak)
        return;
    p->origin_ktime_ns = p->ktime_ns;
    p->origin_pid = p->pid;
    p->origin_weak = weak;
}

// Judge the name: basename truncated to 15 chars, exactly as the kernel sets comm. Returns
// its N_* bits: N_CATALOG forwards the exec, N_INTERPRETER has its script argument judged.
static __always_inline u32 name_bits(const char *path, int len)
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
    u32 two = (u8)path[base & (FILENAME_LEN - 1)] | (u32)(u8)path[(base + 1) & (FILENAME_LEN - 1)] << 8;
    u8 *head = name_heads.lookup(&two);
    if (!head || !*head)
        return 0;
    struct comm_key key = {};
    for (int j = 0; j < 15; j++) {
        char c = path[(base + j) & (FILENAME_LEN - 1)];
        if (c == 0 || base + j >= FILENAME_LEN)
            break;
        key.name[j] = c;
    }
    u8 *bits = catalog_comms.lookup(&key);
    return bits ? *bits : 0;
}

static __always_inline u32 name_match(u32 bits) { return bits & N_CATALOG ? F_MATCH_COMM : 0; }

// An interpreter started on a script (sh /tmp/x.sh, python3 -u ./p.py): the first argument
// of head (argv, NUL-separated, head_len bytes) after argv[0] and any options, judged as a
// path is. None for -c/-e/-m (a command string or a module, not a file: what they run
// execs on its own). Options that take a value (bash -O opt) are not known here: their
// value is judged instead, and matches only if it is relative (a weak origin, which user
// space resolves). The arguments are walked with one string read each (its length is
// where the next starts), HEAD_ARGS at most: no byte loop for the verifier to unroll.
// Returns F_MATCH_SCRIPT | F_PATH_RELATIVE bits.
static __always_inline u32 script_match(const char *head, u32 head_len, struct path_buf *buf)
{
    u32 start = 0;
    // A bounded loop (the verifier walks its HEAD_ARGS rounds; the ring buffer already
    // needs a newer kernel than bounded loops do): clang cannot unroll it, for its exits.
    for (int a = 0; a < HEAD_ARGS; a++) {
        if (start >= head_len)
            return 0;
        int len = bpf_probe_read_kernel_str(buf->path, HEAD_LEN, &head[start & (HEAD_LEN - 1)]);
        if (len <= 0 || start + len > head_len)
            return 0;   // cut at the end of the head: what follows is not this exec's
        start += len;
        if (a == 0)
            continue;   // argv[0]
        char c0 = buf->path[0], c1 = buf->path[1], c2 = buf->path[2];
        if (c0 == '-') {
            if ((c1 == 'c' || c1 == 'e' || c1 == 'm') && c2 == 0)
                return 0;
            continue;
        }
        if (c0 == 0)
            return 0;   // an empty argument, not an fd exec
        u32 m = path_match(buf);
        return m ? F_MATCH_SCRIPT | (m & F_PATH_RELATIVE) : 0;
    }
    return 0;
}

// What a tracked process contacts is reported (netutil_sock.bpf.c). A process is tracked
// from an exec forwarded for what it is (a catalog name or content) or for its place (an
// origin), and its children from their fork: `track` names that exec, (pid, exec time),
// the key user space joins socket events to the exec's row by. An exec forwarded only to
// be judged (F_UNJUDGED: the first run of a renamed copy of nc looks like that) tracks
// until user space has judged it, if the lineage had no track or only a pending one: its
// verdict, in `track_verdicts` (netutil_sock.bpf.c), confirms the track or ends it.
#define F_TRACKS (F_MATCH_COMM | F_MATCH_PATH | F_MATCH_SCRIPT | F_MATCH_CONTENT)

// Hand a forwarded exec to user space: the fields both modes fill the same way, from the
// slot the exec just committed (comm, file, time) and from the current task.
static __always_inline void forward(struct exec_event *ev, struct proc *p, u32 old_tid, u32 match, u64 uid_gid)
{
    ev->ktime_ns = p->ktime_ns;
    ev->cgroup_id = bpf_get_current_cgroup_id();
    ev->pid = p->pid;
    ev->old_tid = old_tid;
    ev->ppid = p->ppid;
    ev->uid = (u32)uid_gid;
    ev->gid = uid_gid >> 32;
    ev->flags |= match;
    ev->origin_ktime_ns = p->origin_ktime_ns;
    ev->origin_pid = p->origin_pid;
    ev->track_prev_ktime_ns = p->track_ktime_ns;
    ev->track_prev_pid = p->track_pid;
    if ((match & F_TRACKS) || ((match & F_UNJUDGED) && (!p->track_ktime_ns || p->track_pending))) {
        p->track_ktime_ns = p->ktime_ns;
        p->track_pid = p->pid;
        p->sock_budget = SOCK_BUDGET;
        p->track_pending = !(match & F_TRACKS);
        if (p->track_pending)
            ev->flags |= F_TRACK_PENDING;
    }
    ev->track_ktime_ns = p->track_ktime_ns;
    ev->track_pid = p->track_pid;
    __builtin_memcpy(ev->comm, p->comm, 16);
    bpf_probe_read_kernel(ev->filename, FILENAME_LEN, p->file);
    u32 size = ev->args_size;
    if (size > ARGS_BUF + ARG_MAX_LEN)
        size = ARGS_BUF + ARG_MAX_LEN;
    if (events.ringbuf_output(ev, offsetof(struct exec_event, args) + size, 0))
        count(C_LOST);
    else
        count(C_FORWARDED);
}

// A new process (not a thread) claims its slot: parent and birth time; no image yet (it
// runs its parent's until it execs). Nothing is cleared at exit: the slot keeps the
// exited process for its children reported later, until a newer pid claims it.
static __always_inline int on_fork(u64 clone_flags, u32 pid)
{
    if (clone_flags & CLONE_THREAD)
        return 0;
    u32 caller = bpf_get_current_pid_tgid() >> 32;
    u32 ppid = caller;
    u64 origin_ktime_ns = 0, track_ktime_ns = 0;
    u32 origin_pid = 0, origin_weak = 0, track_pid = 0, track_pending = 0;
    struct proc *up = slot_of(caller);
    if (up && up->pid == caller) {
        // The child inherits the caller's origin, also with CLONE_PARENT (it becomes a
        // sibling of the caller, but the caller made it).
        origin_ktime_ns = up->origin_ktime_ns;
        origin_pid = up->origin_pid;
        origin_weak = up->origin_weak;
        track_ktime_ns = up->track_ktime_ns;
        track_pid = up->track_pid;
        track_pending = up->track_pending;
        if (clone_flags & CLONE_PARENT)
            ppid = up->ppid;
    } else if (clone_flags & CLONE_PARENT) {
        ppid = 0;   // the caller is older than the probe, or its slot was taken
    }
    struct proc *p = slot_of(pid);
    if (!p)
        return 0;
    claim(p, pid, ppid, bpf_ktime_get_ns());
    p->origin_ktime_ns = origin_ktime_ns;
    p->origin_pid = origin_pid;
    p->origin_weak = origin_weak;
    p->track_ktime_ns = track_ktime_ns;
    p->track_pid = track_pid;
    p->track_pending = track_pending;
    p->sock_budget = track_ktime_ns || origin_ktime_ns ? SOCK_BUDGET : 0;
    return 0;
}

// Head of argv for the ancestry map of every process: a few args, HEAD_LEN bytes.
// head has HEAD_LEN bytes of slack so that each read can use the constant HEAD_LEN size.
static __always_inline u32 read_head(char *head, const char *const *argv)
{
    // The pointers in one read (one helper call, not HEAD_ARGS); one by one only when
    // that read runs past the end of argv's mapping.
    const char *ptrs[HEAD_ARGS] = {};
    if (bpf_probe_read_user(ptrs, sizeof(ptrs), argv)) {
#pragma unroll
        for (int i = 0; i < HEAD_ARGS; i++) {
            if (bpf_probe_read_user(&ptrs[i], sizeof(ptrs[i]), &argv[i]) || !ptrs[i])
                break;
        }
    }
    u32 off = 0;
#pragma unroll
    for (int i = 0; i < HEAD_ARGS; i++) {
        const char *ptr = ptrs[i];
        if (off >= HEAD_LEN || !ptr)
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
