// SPDX-License-Identifier: Apache-2.0
//
// netutil_exec, btf mode (docs/design.md, "The kernel side"): appended by probe.py after
// netutil_exec.bpf.c, whose maps and helpers it uses.

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
        FIELD(argv, regs, OFF_REGS_ARG2);   // execve(filename, argv, envp)
    else if (nr == NR_EXECVEAT)
        FIELD(argv, regs, OFF_REGS_ARG3);   // execveat(dfd, filename, argv, envp, flags)
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
#endif  // PROBE_BTF
