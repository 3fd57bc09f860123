// SPDX-License-Identifier: Apache-2.0
//
// netutil_sock_send: what tracked processes send that the socket programs do not see
// (docs/design.md, "The socket side"): their DNS questions (what they send to port 53)
// and their unconnected UDP datagrams (a `send`: the destination is per datagram).
// Appended by probe.py after netutil_sock.bpf.c, whose events, maps and helpers it uses.
//
// Two hooks, one per build:
//   SENDS_AT_SYSCALL (btf mode on x86_64 kernels that have it, 6.3+): a raw tracepoint on
//     sock:sock_send_length. It
//     fires once per send, in the sender's context, after the send: an untracked sender
//     returns after one array lookup (its slot), and nothing runs per packet. What was
//     sent is read again from the syscall's own arguments (write, writev, sendto, sendmsg,
//     sendmmsg), in user memory, through the registers the syscall was entered with.
//   else (tracepoint mode, which reads no kernel struct; other machines and older kernels):
//     a cgroup_skb egress program, which reads the packets as they leave. It runs on
//     every packet of the host.

#if SENDS_AT_SYSCALL
// ---------------------------------------------------------------------------------------
// The raw tracepoint. Offsets (fields.py SEND_FIELDS, REGS_FIELDS) come from the kernel's
// BTF; the syscall numbers (fields.py SYSCALLS) and argument registers are x86_64's
// (fields.py enables this build there only).

#define AF_UNSPEC 0
#define IOV_READ 4   // iovecs of one message read at most (a TCP question: length and message)

// The user's structs, as the x86_64 ABI lays them out.
struct user_iov { u64 base; u64 len; };
struct user_msg { u64 name; u32 namelen; u32 pad; u64 iov; u64 iovlen; u64 control; u64 controllen; u32 flags; u32 pad2; };
struct user_mmsg { struct user_msg hdr; u32 len; u32 pad; };
struct user_addr { u16 family; u16 port; u32 addr4; u32 addr6[4]; };   // sockaddr_in, sockaddr_in6 (flowinfo at 4)

// Which message of a sendmmsg the tracepoint fires for (it fires once for each, in
// order, and is not told the index): by thread, the vector and the next index. A failed
// send ends the call (the entry goes); a call on another vector starts at 0.
struct mmsg_at { u64 mmsg; u32 next; u32 vlen; };
BPF_TABLE("lru_hash", u64, struct mmsg_at, mmsg_next, 1024);

// The payload as big as DNS_MAX, with room behind it: each iovec's copy starts below
// DNS_MAX and is at most DNS_MAX long, which the verifier can check against this value.
struct send_scratch { struct dns_event d; u8 spill[DNS_MAX]; };
BPF_PERCPU_ARRAY(send_heap, struct send_scratch, 1);

// The message being sent: its iovecs (or one buffer) and its destination, if named.
struct sent { u64 iov; u64 iovlen; u64 buf; u64 name; u64 namelen; };

// What the syscall being served sent, from its registers; false when it is none of ours
// (io_uring, sendfile, splice, a 32-bit process, a send by the kernel itself). ret: the
// send's result; a sendmmsg's next message is the next index unless it failed.
static __always_inline int sent_by_syscall(struct sent *s, int ret)
{
    void *regs = (void *)bpf_task_pt_regs(bpf_get_current_task_btf());
    u8 span[REGS_SPAN] = {};
    u64 nr = 0, arg2 = 0, arg3 = 0, arg5 = 0, arg6 = 0;
    if (SPAN_READ(span, regs, REGS))
        return 0;
    SPAN_FIELD(nr, span, REGS, OFF_REGS_NR);
    SPAN_FIELD(arg2, span, REGS, OFF_REGS_ARG2);
    SPAN_FIELD(arg3, span, REGS, OFF_REGS_ARG3);
    SPAN_FIELD(arg5, span, REGS, OFF_REGS_ARG5);
    SPAN_FIELD(arg6, span, REGS, OFF_REGS_ARG6);
    if (nr == NR_WRITE) {
        s->buf = arg2;
    } else if (nr == NR_SENDTO) {
        s->buf = arg2;
        s->name = arg5;
        s->namelen = arg6;
    } else if (nr == NR_WRITEV) {
        s->iov = arg2;
        s->iovlen = arg3;
    } else if (nr == NR_SENDMSG || nr == NR_SENDMMSG) {
        u64 msg = arg2;
        if (nr == NR_SENDMMSG) {
            u64 tid = bpf_get_current_pid_tgid();
            struct mmsg_at *at = mmsg_next.lookup(&tid);
            u32 i = at && at->mmsg == arg2 && at->next < at->vlen ? at->next : 0;
            msg += (u64)i * sizeof(struct user_mmsg);
            struct mmsg_at next = {.mmsg = arg2, .next = i + 1, .vlen = (u32)arg3};
            if (ret >= 0 && next.next < next.vlen)   // an empty datagram (0) is a message too
                mmsg_next.update(&tid, &next);
            else if (at)
                mmsg_next.delete(&tid);
        }
        struct user_msg m = {};
        if (bpf_probe_read_user(&m, sizeof(m), (void *)msg))
            return 0;
        s->iov = m.iov;
        s->iovlen = m.iovlen;
        s->name = m.name;
        s->namelen = m.namelen;
    } else {
        return 0;
    }
    return 1;
}

// Up to DNS_MAX bytes of what was sent (`sent` bytes in all) into payload.
static __always_inline u32 copy_sent(u8 *payload, struct sent *s, u32 sent)
{
    if (s->buf) {
        u32 n = DNS_LEN(sent < DNS_MAX ? sent : DNS_MAX);
        return bpf_probe_read_user(payload, n, (void *)s->buf) ? 0 : n;
    }
    u32 off = 0;
#pragma unroll
    for (int i = 0; i < IOV_READ; i++) {
        if (i >= s->iovlen || off >= DNS_MAX || off >= sent)
            break;
        struct user_iov v = {};
        if (bpf_probe_read_user(&v, sizeof(v), (void *)(s->iov + i * sizeof(v))))
            break;
        if (!v.len)
            continue;
        u32 n = DNS_LEN(v.len < DNS_MAX ? v.len : DNS_MAX);
        off &= DNS_MAX - 1;
        if (bpf_probe_read_user(payload + off, n, (void *)v.base))
            break;
        off += n;
    }
    if (off > sent)
        off = sent;
    return off < DNS_MAX ? off : DNS_MAX;
}

// The destination a UDP send named, as udp_sendmsg and udpv6_sendmsg read it: a name only
// when its length is not 0; AF_UNSPEC means AF_INET on an IPv4 socket and no name on an
// IPv6 one. False when none (the socket's own peer then). TCP ignores the name.
static __always_inline int named(struct user_addr *to, struct sent *s, u16 family)
{
    if (!s->name || !s->namelen)
        return 0;
    if (bpf_probe_read_user(to, sizeof(*to), (void *)s->name) && bpf_probe_read_user(to, 16, (void *)s->name))
        return 0;
    if (to->family == AF_UNSPEC && family == AF_INET)
        to->family = AF_INET;
    return to->family == AF_INET || to->family == AF_INET6;
}

// sock_send_length(sk, ret, flags): after a socket's send. Only a tracked process's sends
// on an inet socket go further: UDP (a datagram to port 53 is a question, an unconnected
// or named one a `send`), and TCP to port 53 (a question).
int netutil_send(struct bpf_raw_tracepoint_args *ctx)
{
    struct proc *p = tracked_proc();
    if (!p)
        return 0;
    int ret = (int)ctx->args[1];
    void *sk = (void *)ctx->args[0];
    u8 skc[SKC_SPAN] = {};
    u16 family = 0, dport = 0, lport = 0, protocol = 0;
    if (SPAN_READ(skc, sk, SKC))
        return 0;
    SPAN_FIELD(family, skc, SKC, OFF_SKC_FAMILY);
    SPAN_FIELD(dport, skc, SKC, OFF_SKC_DPORT);
    SPAN_FIELD(lport, skc, SKC, OFF_SKC_NUM);
    FIELD(protocol, sk, OFF_SK_PROTOCOL);
    if ((family != AF_INET && family != AF_INET6) || (protocol != IPPROTO_UDP && protocol != IPPROTO_TCP))
        return 0;
    if (protocol == IPPROTO_TCP && dport != NTOHS(DNS_PORT))
        return 0;   // a TCP stream not to port 53: its connect was the event
    struct sent s = {};
    int read = sent_by_syscall(&s, ret);   // before ret is judged: a sendmmsg's index moves on
    if (ret <= 0)
        return 0;
    struct user_addr to = {};
    int name = protocol == IPPROTO_UDP && read && named(&to, &s, family);
    u16 port = name ? NTOHS(to.port) : NTOHS(dport);
    u16 action = port == DNS_PORT ? A_DNS : A_SEND;
    if (action == A_SEND && dport != 0 && !name)
        return 0;   // a connected datagram not to port 53: its connect was the event
    int zero = 0;
    struct send_scratch *scratch = send_heap.lookup(&zero);
    if (!scratch || !charge(p))
        return 0;
    struct dns_event *d = &scratch->d;
    __builtin_memset(&d->ev, 0, sizeof(d->ev));
    d->payload_len = 0;
    from_proc(&d->ev, p, action);
    d->ev.family = name ? to.family : family;
    d->ev.protocol = protocol;
    d->ev.local_port = lport;
    d->ev.remote_port = dport || name ? port : 0;   // 0: an unconnected datagram whose destination was not read
    if (name && to.family == AF_INET6) {
        COPY_IP6(d->ev.remote_addr, to.addr6);
    } else if (name) {
        d->ev.remote_addr[0] = to.addr4;
    } else if (family == AF_INET6) {
        SPAN_FIELD(d->ev.remote_addr, skc, SKC, OFF_SKC_V6_DADDR);
    } else {
        SPAN_FIELD(d->ev.remote_addr[0], skc, SKC, OFF_SKC_DADDR);
    }
    if (!read)
        count(C_SOCK_UNREAD);   // reported with what the socket says: no question, no destination
    u32 size = offsetof(struct dns_event, payload);
    if (action == A_DNS) {
        if (read)
            d->payload_len = copy_sent(d->payload, &s, ret);
        size = sizeof(*d);
    }
    hand_over(d, size);
    return 0;
}

#else
// ---------------------------------------------------------------------------------------
// The egress program (tracepoint mode).

#define SOCK_DGRAM 2

// socket(): a tracked process's UDP socket is tagged with its owner, so that egress knows
// its unconnected datagrams by the socket, whatever task is current there (a tunnel or
// overlay device's own socket sends in whoever's context the packet came).
int netutil_sock_create(struct bpf_sock *sk)
{
    if (sk->type != SOCK_DGRAM)
        return 1;
    struct proc *p = tracked_proc();
    if (!p)
        return 1;
    struct owner *o = reported_socks.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (o) {
        struct sock_event now = {.cgroup_id = bpf_get_current_cgroup_id(), .uid = (u32)bpf_get_current_uid_gid()};
        own(o, &now, p);
        o->udp = 1;
    }
    return 1;
}

// Every packet the host sends passes here. All but those of a socket connected to port 53
// and of unconnected sockets (UDP: the port is per datagram) leave after two loads; the
// rest after a look at the socket's storage. Of a socket connected to port 53 that its
// tracked owner reported (dns), the payload is copied; of a tracked process's UDP socket
// (udp), an unconnected datagram is a `send`, or, to port 53, a question. The payload: the
// IP and transport headers skipped, DNS_MAX bytes at most.
int netutil_egress(struct __sk_buff *skb)
{
    u32 rport = skb->remote_port >> 16;   // network order, in the high half
    if (rport != 0 && rport != NTOHS(DNS_PORT))
        return 1;
    struct bpf_sock *sk = skb->sk;
    if (!sk)
        return 1;
    sk = bpf_sk_fullsock(sk);
    if (!sk)
        return 1;
    struct owner *o = reported_socks.sk_storage_get(sk, 0, 0);
    if (!o || !(rport ? o->dns : o->udp))
        return 1;
    // Where the transport header and the payload start (skb data is the IP header).
    u8 first = 0, proto = 0;
    u32 off = 0, addr_len = 4;
    if (bpf_skb_load_bytes(skb, 0, &first, 1))
        return 1;
    if ((first >> 4) == 4) {
        off = (first & 0xf) * 4;
        bpf_skb_load_bytes(skb, 9, &proto, 1);
    } else if ((first >> 4) == 6) {
        off = 40;   // extension headers are not followed
        addr_len = 16;
        bpf_skb_load_bytes(skb, 6, &proto, 1);
    } else {
        return 1;
    }
    if (proto != IPPROTO_UDP && proto != IPPROTO_TCP)
        return 1;   // an IPv6 extension header: not followed
    u16 dport = 0;
    if (bpf_skb_load_bytes(skb, off + 2, &dport, 2))
        return 1;
    int dns = dport == NTOHS(DNS_PORT);
    int zero = 0;
    struct dns_event *d = dns_heap.lookup(&zero);
    if (!d)
        return 1;
    __builtin_memset(&d->ev, 0, sizeof(d->ev));
    from_owner(&d->ev, o, dns ? A_DNS : A_SEND);
    d->ev.cookie = bpf_get_socket_cookie(skb);
    d->ev.family = addr_len == 16 ? AF_INET6 : AF_INET;
    d->ev.protocol = proto;
    d->ev.remote_port = NTOHS(dport);
    d->ev.local_port = sk->src_port;
    if (addr_len == 16)
        bpf_skb_load_bytes(skb, 24, d->ev.remote_addr, 16);
    else
        bpf_skb_load_bytes(skb, 16, d->ev.remote_addr, 4);
    d->payload_len = 0;
    u32 size = offsetof(struct dns_event, payload);
    if (dns) {
        off += proto == IPPROTO_UDP ? 8 : 0;
        if (proto == IPPROTO_TCP) {
            u8 doff = 0;
            bpf_skb_load_bytes(skb, off + 12, &doff, 1);
            off += (doff >> 4) * 4;
        }
        if (off >= skb->len)
            return 1;   // no payload (a TCP handshake or ACK)
        u32 len = skb->len - off;
        if (len > DNS_MAX)
            len = DNS_MAX;
        u64 n = DNS_LEN(len);
        if (bpf_skb_load_bytes(skb, off, d->payload, n))
            return 1;
        d->payload_len = n;
        size = sizeof(*d);
    }
    struct proc *owner = slot_of(o->pid);
    if (owner && owner->pid == o->pid && !charge(owner))   // the owner's budget, where its slot is still its own
        return 1;
    hand_over(d, size);
    return 1;
}
#endif  // SENDS_AT_SYSCALL
