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
// Sizes (FILENAME_LEN, ARGS_BUF, ...) and offsets come from probe.py as -D flags.

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
#define C_COUNT 4

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
    u32 pid;                       // owner of the slot; 0: free
    u32 ppid;
    u64 fork_ktime_ns;             // 0: forked before the probe attached
    u64 ktime_ns;                  // exec time of the image; 0: no exec seen
    u64 origin_ktime_ns;           // the lineage's origin, inherited at fork; 0: none
    u32 origin_pid;
    u32 origin_weak;               // 1: the origin is a relative-path exec
    u32 flags;                     // I_* for the image
    u32 uid;
    u32 head_len;
    u32 pend_head_len;
    char comm[16];
    u32 file_key;                  // with file, a path_buf: the filter's trie looks file up in place
    char file[FILENAME_LEN];       // the file exec'd: for a script, the script
    const char *pend_filename;     // caller's pointer, still valid if the exec fails
    u32 pend_tid;                  // thread whose exec is pending; 0: none
    u32 pend_match;                // F_MATCH_* of the pending exec; 0: not forwarded
    u32 cur;                       // head cur & 1 of the two is the image's, the other the pending exec's
    u32 pad;
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
    u64 origin_ktime_ns = 0;
    u32 origin_pid = 0, origin_weak = 0;
    struct proc *up = slot_of(caller);
    if (up && up->pid == caller) {
        // The child inherits the caller's origin, also with CLONE_PARENT (it becomes a
        // sibling of the caller, but the caller made it).
        origin_ktime_ns = up->origin_ktime_ns;
        origin_pid = up->origin_pid;
        origin_weak = up->origin_weak;
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

#if PROBE_BTF
// ---------------------------------------------------------------------------------------
// btf mode: two raw tracepoints (and, where the kernel has BPF trampolines, one fentry).

// A kernel struct field, at the offset probe.py read from the running kernel's BTF.
#define FIELD(dst, base, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (void *)(base) + (off))
// Two fields into dst[0], dst[1]: one read when they are adjacent (each read is a helper
// call, about 60 ns here). The offsets are constants: the compiler keeps one branch.
#define FIELD_PAIR(dst, base, off0, off1)                    \
    do {                                                     \
        if ((off1) == (off0) + sizeof((dst)[0])) {           \
            FIELD(dst, base, off0);                          \
        } else {                                             \
            FIELD((dst)[0], base, off0);                     \
            FIELD((dst)[1], base, off1);                     \
        }                                                    \
    } while (0)

// Several members of one struct in one read (each read is a helper call): the span
// NAME_SPAN bytes from NAME_LO that probe.py found to cover them, then each member by
// its offset in the copy.
#define SPAN_READ(buf, base, NAME) bpf_probe_read_kernel(buf, NAME##_SPAN, (void *)(base) + NAME##_LO)
#define SPAN_FIELD(dst, buf, NAME, off) __builtin_memcpy(&(dst), &(buf)[(off) - NAME##_LO], sizeof(dst))

// The executed image (bprm->file's inode; for a #! script, its interpreter's), as this
// exec opened it: so that no later exec of the pid and no file put at the path can
// relabel it, and the key of its content verdict.
struct image_key { u64 ino; u64 sb; };
struct verdict { u64 ctime_sec; u32 ctime_nsec; u32 utility; };

static __always_inline void read_image(void *file, struct image_key *key, struct verdict *seen)
{
    void *inode = 0;
    char span[INODE_SPAN];
    FIELD(inode, file, OFF_FILE_INODE);
    SPAN_READ(span, inode, INODE);
    SPAN_FIELD(key->sb, span, INODE, OFF_INODE_SB);
    SPAN_FIELD(key->ino, span, INODE, OFF_INODE_INO);
    SPAN_FIELD(seen->ctime_sec, span, INODE, OFF_INODE_CTIME_SEC);
    SPAN_FIELD(seen->ctime_nsec, span, INODE, OFF_INODE_CTIME_NSEC);
    seen->ctime_nsec &= 0x7fffffff;   // 6.13+: the top bit says a stat saw it (multigrain timestamps)
}

#if CONTENT_VERDICTS
// Content verdicts: every executable judged once by content, wherever it lives. The first
// exec of an image with no verdict for its current content is forwarded (F_UNJUDGED);
// user space compares it with the installed utilities and writes the verdict back with
// the change time it judged. Later execs cost one slot check: forwarded only when the
// verdict is a utility (F_MATCH_CONTENT). Any write, rename, link or chmod of the file
// moves its ctime (which no system call sets back), so a verdict never outlives the
// content it was given for. A direct-mapped array, as `procs` is: a hash lookup cost
// ~250 ns more per exec here (an LRU's more still), a slot a bounds check; two images
// that share a slot take turns, each judged again when it comes back.
struct verdict_slot { struct image_key key; struct verdict v; };
BPF_ARRAY(verdicts, struct verdict_slot, VERDICTS_MAX);

static __always_inline u32 verdict_match(struct image_key *key, struct verdict *seen)
{
    if (!key->sb)
        return F_UNJUDGED;   // the image could not be read: never the zeroed slot's "no"
    u32 slot = (key->ino ^ (key->sb >> 8)) & (VERDICTS_MAX - 1);   // mirrored in probe.py
    struct verdict_slot *s = verdicts.lookup(&slot);
    if (!s || s->key.ino != key->ino || s->key.sb != key->sb
            || s->v.ctime_sec != seen->ctime_sec || s->v.ctime_nsec != seen->ctime_nsec)
        return F_UNJUDGED;
    return s->v.utility ? F_MATCH_CONTENT : 0;
}
#endif

// The exec succeeded and the new image is in place but has not run: its argv, on its own
// stack between mm->arg_start and mm->arg_end, is what the caller passed (for a #! script,
// as the kernel rewrote it: interpreter [arg] script args...). Commit the image of every
// process; forward candidates.
RAW_TRACEPOINT_PROBE(sched_process_exec)
{
    // TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
    void *task = (void *)ctx->args[0];
    u32 old_tid = (u32)ctx->args[1];
    void *bprm = (void *)ctx->args[2];
    int zero = 0;
    count(C_EXECS_SEEN);

    struct proc *p = proc_of(bpf_get_current_pid_tgid() >> 32);
    if (!p)
        return 0;
    // The file goes straight into the slot, where the filter looks it up: no copy.
    // bprm's file, argc, filename and interp (filename and interp differ for a #! script)
    char bspan[BPRM_SPAN];
    const char *names[2] = {};
    void *file = 0;
    int argc = 0;
    SPAN_READ(bspan, bprm, BPRM);
    SPAN_FIELD(names[0], bspan, BPRM, OFF_BPRM_FILENAME);
    SPAN_FIELD(names[1], bspan, BPRM, OFF_BPRM_INTERP);
    SPAN_FIELD(file, bspan, BPRM, OFF_BPRM_FILE);
    SPAN_FIELD(argc, bspan, BPRM, OFF_BPRM_ARGC);
    int script = names[0] != names[1];
    int len = bpf_probe_read_kernel_str(p->file, FILENAME_LEN, names[0]);
    if (len <= 0) {
        p->file[0] = 0;
        len = 1;
    }
    u32 nbits = name_bits(p->file, len);
    u32 match = name_match(nbits) | path_match((struct path_buf *)&p->file_key);
    struct image_key key = {};
    struct verdict seen = {};
#if CONTENT_VERDICTS
    read_image(file, &key, &seen);
#endif

    void *mm = 0;
    unsigned long range[2] = {};   // arg_start, arg_end
    FIELD(mm, task, OFF_TASK_MM);
    FIELD_PAIR(range, mm, OFF_MM_ARG_START, OFF_MM_ARG_END);
    u64 size = range[1] > range[0] ? range[1] - range[0] : 0;

    u64 uid_gid = bpf_get_current_uid_gid();
    char *head = pending_head(p);
    u32 head_len = size < HEAD_LEN ? size : HEAD_LEN;
    asm volatile("" : "+r"(head_len));   // keep the bound check for the verifier
    if (head_len > HEAD_LEN)
        head_len = HEAD_LEN;
    int head_read = 0;
    if ((nbits & N_INTERPRETER) && !match && !script) {
        struct path_buf *buf = path_heap.lookup(&zero);
        bpf_probe_read_user(head, head_len, (void *)range[0]);
        head_read = 1;
        if (buf)
            match = script_match(head, head_len, buf);
    }
#if CONTENT_VERDICTS
    if (!match)
        match = verdict_match(&key, &seen);   // after the script test: an interpreter is one image
#endif
    struct exec_event *ev = match ? event_heap.lookup(&zero) : 0;
    if (ev) {
        // One read for the whole argv, as far as it fits; the head is its start.
        u32 n = size < sizeof(ev->args) ? size : sizeof(ev->args);
        bpf_probe_read_user(ev->args, n, (void *)range[0]);
        ev->args_size = n;
        ev->flags = (n < size ? F_ARGS_TRUNCATED : 0) | (script ? F_SCRIPT : 0);
        ev->argc = argc;
        bpf_probe_read_kernel(head, HEAD_LEN, ev->args);
#if !CONTENT_VERDICTS
        read_image(file, &key, &seen);
#endif
        ev->ino = key.ino;
        ev->image_sb = key.sb;
        ev->ctime_sec = seen.ctime_sec;
        ev->ctime_nsec = seen.ctime_nsec;
        FIELD(ev->dev, key.sb, OFF_SB_DEV);
    } else if (!head_read) {
        bpf_probe_read_user(head, head_len, (void *)range[0]);
    }
    p->ktime_ns = bpf_ktime_get_ns();
    p->uid = (u32)uid_gid;
    p->flags = script ? I_SCRIPT : 0;
    p->head_len = head_len;
    p->cur ^= 1;
    p->pend_tid = 0;
    mark_origin(p, match);
    bpf_get_current_comm(p->comm, sizeof(p->comm));
    if (ev)
        forward(ev, p, old_tid, match, uid_gid);
    return 0;
}

RAW_TRACEPOINT_PROBE(task_newtask)
{
    // TP_PROTO(struct task_struct *task, u64 clone_flags)
    u64 clone_flags = ctx->args[1];
    if (clone_flags & CLONE_THREAD)
        return 0;   // before the read: threads are most of what is created
    u32 pid = 0;
    FIELD(pid, (void *)ctx->args[0], OFF_TASK_PID);
    return on_fork(clone_flags, pid);
}

#if HAVE_FENTRY
// A script without #!: the exec fails with ENOEXEC, no exec tracepoint fires, and the
// shell goes on to interpret the file itself in the process that tried. Every exec
// attempt passes this LSM hook after prepare_binprm() read the file's first bytes into
// bprm->buf, so an attempt on a file that is neither ELF nor #! is named here, at once,
// as the image of the process (with the syscall's argv head). Should the exec succeed
// after all (binfmt_misc), sched_process_exec commits the real image over it.
KFUNC_PROBE(security_bprm_check, void *bprm)
{
    u32 magic = 0;
    FIELD(magic, bprm, OFF_BPRM_BUF);
    if (magic == 0x464c457f || (magic & 0xffff) == 0x2123)   // "\x7fELF", "#!"
        return 0;
    struct proc *p = proc_of(bpf_get_current_pid_tgid() >> 32);
    if (!p)
        return 0;
    // The syscall's argv pointer, from the registers it was entered with.
    void *regs = (void *)bpf_task_pt_regs(bpf_get_current_task_btf());
    u64 nr = 0;
    const char *const *argv = 0;
    FIELD(nr, regs, OFF_REGS_NR);
    if (nr == NR_EXECVE)
        FIELD(argv, regs, OFF_REGS_EXECVE_ARGV);
    else if (nr == NR_EXECVEAT)
        FIELD(argv, regs, OFF_REGS_EXECVEAT_ARGV);
    else
        return 0;   // an exec by the kernel itself (kernel_execve)
    const char *filename = 0;
    FIELD(filename, bprm, OFF_BPRM_FILENAME);
    p->head_len = read_head(pending_head(p), argv);
    p->ktime_ns = bpf_ktime_get_ns();
    p->uid = (u32)bpf_get_current_uid_gid();
    p->flags = I_SCRIPT_NOEXEC;
    p->cur ^= 1;
    bpf_get_current_comm(p->comm, sizeof(p->comm));
    bpf_probe_read_kernel_str(p->file, FILENAME_LEN, filename);
    return 0;
}
#endif  // HAVE_FENTRY

#else
// ---------------------------------------------------------------------------------------
// tracepoint mode: the syscalls' tracepoints for argv and the outcome, sched for commits.

// A candidate's full argv between syscall entry and exec, keyed by thread. LRU, so that
// the entries of execs that die mid-way cannot fill the map.
BPF_TABLE("lru_hash", u32, struct exec_event, pending_full, PENDING_MAX);


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

// Both exec syscalls: stash what only the caller's memory holds (argv) before exec
// replaces it. The filter decides here whether the full argv is worth reading.
static __always_inline int on_exec_enter(const char *filename, const char *const *argv, int fd_exec)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tid = (u32)pid_tgid;
    int zero = 0;
    struct path_buf *path = path_heap.lookup(&zero);
    struct proc *p = proc_of(pid_tgid >> 32);
    if (!path || !p)
        return 0;
    int len = bpf_probe_read_user_str(path->path, FILENAME_LEN, filename);
    if (len < 0)
        return 0;
    // comm will be the basename: judged here, so the exec's program need not look again.
    u32 nbits = name_bits(path->path, len);
    u32 match = name_match(nbits) | (fd_exec ? F_MATCH_PATH : path_match(path));
    char *head = pending_head(p);
    int head_read = 0;
    if ((nbits & N_INTERPRETER) && !match) {
        // A #! script is exec'd by its own path (judged above): this is `sh x.sh`.
        p->pend_head_len = read_head(head, argv);
        head_read = 1;
        match = script_match(head, p->pend_head_len, path);
    }
    struct exec_event *ev = match ? event_heap.lookup(&zero) : 0;
    if (ev) {
        ev->flags = 0;
        read_argv(ev, argv);
        p->pend_head_len = ev->args_size < HEAD_LEN ? ev->args_size : HEAD_LEN;
        bpf_probe_read_kernel(head, HEAD_LEN, ev->args);
        pending_full.update(&tid, ev);
    } else if (!head_read) {
        p->pend_head_len = read_head(head, argv);
    }
    p->pend_filename = filename;
    p->pend_match = match;
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
    struct proc *p = slot_of(tgid);
    if (!p || p->pid != tgid || p->pend_tid != tid)
        return 0;
    if (ret == -ENOEXEC) {
        p->ktime_ns = bpf_ktime_get_ns();
        p->uid = (u32)bpf_get_current_uid_gid();
        p->flags = I_SCRIPT_NOEXEC;
        p->head_len = p->pend_head_len;
        p->cur ^= 1;
        bpf_get_current_comm(p->comm, sizeof(p->comm));
        bpf_probe_read_user_str(p->file, FILENAME_LEN, p->pend_filename);
        mark_origin(p, p->pend_match);   // the shell reads the script: it is the image now
    }
    if (p->pend_match)
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
    u32 match = entered ? p->pend_match : 0;
    u64 uid_gid = bpf_get_current_uid_gid();
    p->ktime_ns = bpf_ktime_get_ns();
    p->uid = (u32)uid_gid;
    p->flags = 0;
    bpf_get_current_comm(p->comm, sizeof(p->comm));
    bpf_probe_read_kernel_str(p->file, FILENAME_LEN, (void *)args + (args->data_loc_filename & 0xFFFF));
    p->head_len = entered ? p->pend_head_len : 0;
    if (entered)
        p->cur ^= 1;   // the pending head becomes the image's
    p->pend_tid = 0;

    if (!entered) {
        // Exec entered before the probe attached: judge comm and path here, from the
        // tracepoint. (Otherwise entry judged them: comm is the basename it looked up,
        // and an fd exec, whose comm may differ, is forwarded on its path.)
        struct comm_key ck = {};
        __builtin_memcpy(ck.name, p->comm, 16);
        u8 *bits = catalog_comms.lookup(&ck);
        if (bits)
            match |= name_match(*bits);
        struct path_buf *path = path_heap.lookup(&zero);
        if (path) {
            bpf_probe_read_kernel(path->path, PREFIX_LEN, p->file);
            match |= path_match(path);
        }
    }
    mark_origin(p, match);
    if (!match)
        return 0;
    struct exec_event *ev = entered ? pending_full.lookup(&old_tid) : 0;
    if (!ev) {
        // No argv was read at entry (the exec entered before attach): forward the head.
        ev = event_heap.lookup(&zero);
        if (!ev)
            goto out;
        ev->flags = F_ARGS_TRUNCATED | (entered ? 0 : F_NO_ENTER);
        ev->args_size = p->head_len;
        ev->argc = 0;
        bpf_probe_read_kernel(ev->args, HEAD_LEN, image_head(p));
    }
    forward(ev, p, old_tid, match, uid_gid);
out:
    if (entered)
        pending_full.delete(&old_tid);
    return 0;
}

TRACEPOINT_PROBE(task, task_newtask)
{
    return on_fork(args->clone_flags, args->pid);
}

#endif  // PROBE_BTF
