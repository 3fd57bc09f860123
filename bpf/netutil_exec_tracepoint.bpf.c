// SPDX-License-Identifier: Apache-2.0
//
// netutil_exec, tracepoint mode (the fallback: docs/design.md, "The kernel side"):
// appended by probe.py after netutil_exec.bpf.c, whose maps and helpers it uses.

#if !PROBE_BTF
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
#endif  // !PROBE_BTF
