// SPDX-License-Identifier: Apache-2.0
//
// netutil_sock: what tracked processes contact (docs/design.md, "The socket side"):
// appended by probe.py after the exec programs, whose `procs` slots say who is tracked.
//
// cgroup socket programs, attached to the root of the cgroup v2 hierarchy with BPF links
// (a killed sensor leaves nothing attached), in both probe modes:
//   connect4/6     connect() of any socket: the destination as the caller gave it
//   post_bind4/6   bind(): the local address
// and, for a TCP connect's outcome and the peers a tracked listener accepted, one build of two:
//   OUTCOMES_AT_TRACEPOINTS (btf mode where the kernel has both tracepoints, 5.14+): raw
//     tracepoints that fire once in a socket's life or when a socket's error is set,
//     never per TCP state: sock:inet_sk_error_report (a connect refused, timed out,
//     unreachable or given up) and tcp:tcp_destroy_sock (how a connect with no error
//     ended; a tracked listener's connection that ended). User space reads the rest
//     (sock_diag, events/sockdiag.py): the state of a connect still open, a listener's
//     listen() and its open connections.
//   else (tracepoint mode): sock_ops, which the kernel calls at about ten points of every
//     TCP connection of the host, tracked or not (measured: bench/sockets.py).
// What tracked processes send (DNS questions, unconnected UDP datagrams) is read in
// netutil_sock_send.bpf.c. (No sendmsg4/6: the kernel runs them under the socket's lock
// for every unconnected send of every process.)
// They run in the caller's context (outcomes and accepts in softirq: pid 0), so that an
// untracked process costs one array lookup (its slot) and nothing else: no syscall hook,
// kprobe or fentry. sock_ops only asks the kernel for state changes of the sockets of
// tracked processes (bpf_sock_ops_cb_flags_set).

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
// An IPv6 address word by word: a context's fields are read 4 bytes at a time.
#define COPY_IP6(dst, src) do { (dst)[0] = (src)[0]; (dst)[1] = (src)[1]; (dst)[2] = (src)[2]; (dst)[3] = (src)[3]; } while (0)
#define NTOHS(x) ((u16)((((x) & 0xff) << 8) | (((x) >> 8) & 0xff)))
// A length of 1..DNS_MAX (n: 1..DNS_MAX) in a form the verifier can bound (DNS_MAX: a power of 2).
#define DNS_LEN(n) ((((n) - 1) & (DNS_MAX - 1)) + 1)

#define A_CONNECT 1
#define A_SEND 2
#define A_BIND 3
#define A_LISTEN 4
#define A_ACCEPT 5
#define A_OUTCOME 6   // the outcome of an earlier connect, by socket cookie (status below)
#define A_DNS 7       // a port-53 payload of a tracked socket: its first DNS_MAX bytes follow the event
#define A_PEER_END 8  // a connection on a tracked listener's port ended (OUTCOMES_AT_TRACEPOINTS)
#define DNS_PORT 53

// sock_event.status, of A_OUTCOME
#define S_SYN_SENT 1      // the SYN left: the connect found a route (a connect with none is unreachable)
#define S_ESTABLISHED 2
#define S_CLOSED 3        // SYN_SENT -> CLOSE: refused (a reset: retrans 0) or timed out
// and OUTCOMES_AT_TRACEPOINTS' (S_ESTABLISHED too: a connect answered, at its error or end)
#define S_FAILED 4        // the kernel reported an error (sock_event.error: sk_err)
#define S_UNANSWERED 5    // it ended unanswered by the caller's doing: a close, an abort (sock_ops too)
#define S_NO_SYN 6        // it ended having sent nothing: the connect found no route
// The errors a caller's own abort of a waiting connect sets (tcp_disconnect: a close with
// SO_LINGER 0, connect(AF_UNSPEC); tcp_abort: ss -K). Asm-generic values.
#define ECONNABORTED 103
#define ECONNRESET 104
#define EHOSTUNREACH 113

struct sock_event {
    u64 ktime_ns;
    u64 cookie;            // the socket's cookie: an outcome names its connect by it
    u64 cgroup_id;
    u64 track_ktime_ns;    // the tracked exec of the process's lineage (exec_event's track)
    u64 origin_ktime_ns;   // and its origin
    u32 track_pid;
    u32 origin_pid;
    u32 pid;               // 0 for an outcome (softirq); an accept's is its listener's
    u32 uid;
    u16 action;
    u16 family;            // AF_INET or AF_INET6
    u16 protocol;          // IPPROTO_TCP, IPPROTO_UDP
    u16 status;
    u16 local_port;        // host order
    u16 remote_port;
    u32 retrans;           // of S_CLOSED: SYNs sent again before the end (0: a reset came)
    u32 error;             // of S_FAILED: the socket's error (ECONNREFUSED, ETIMEDOUT, ...)
    u32 netns;             // of A_PEER_END: its network namespace (inode number)
    u32 local_addr[4];     // network order; IPv4 in [0]
    u32 remote_addr[4];
    char comm[16];
};

// A DNS question as it left: the event, then the payload (UDP's; TCP's with its length
// prefix unless the sender wrote that apart). payload_len 0: the question could not be read.
struct dns_event {
    struct sock_event ev;
    u32 payload_len;
    u8 payload[DNS_MAX];
};

// The tracked process a socket belongs to, for what happens where no process (or another
// one) is current: a listener's accepts (softirq), a reported socket's packets and outcome.
struct owner { u64 track_ktime_ns; u64 origin_ktime_ns; u64 cgroup_id; u32 track_pid; u32 origin_pid;
               u32 pid; u32 uid; char comm[16]; u32 dns; u32 udp; };
// A listener of a tracked process: by network namespace and port.
struct listen_key { u64 netns; u32 port; u32 pad; };

BPF_RINGBUF_OUTPUT(sock_events, SOCK_RINGBUF_PAGES);   // their own: a scan cannot cost exec events
BPF_PERCPU_ARRAY(dns_heap, struct dns_event, 1);       // too big for the stack (egress); also the records' type for user space
BPF_HASH(listeners, struct listen_key, struct owner, LISTENERS_MAX);
// For the sock_ops build, the sockets whose connect was reported (their outcome is:
// TCP_CONNECT_CB); for the egress build, those a tracked process connected to port 53
// (dns: their questions are read there) and the UDP sockets a tracked process made (udp:
// their unconnected datagrams are sends). Freed with the socket.
BPF_SK_STORAGE(reported_socks, struct owner);
BPF_ARRAY(listen_ports, u32, 65536);   // listeners per port: one array lookup per accept on the host
#if OUTCOMES_AT_TRACEPOINTS
// TCP connects a tracked process made (reported ones), by socket cookie, until their
// outcome. User space writes listen_ports and listen_at from the listeners it finds
// (sock_diag): a port's count gates the namespace's.
BPF_TABLE("lru_hash", u64, u32, connects, CONNECTS_MAX);
struct listen_at_key { u32 netns; u32 port; };   // netns: the namespace's inode number
BPF_HASH(listen_at, struct listen_at_key, u32, LISTENERS_MAX);
#endif

// User space's verdict on a pending track (F_TRACK_PENDING), by the track's (pid, exec
// time): TRACK_KEEP (its exec is a row: a renamed utility) or TRACK_END (no row).
struct track_key { u64 ktime_ns; u32 pid; u32 pad; };
#define TRACK_KEEP 1
#define TRACK_END 2
BPF_TABLE("lru_hash", struct track_key, u32, track_verdicts, TRACK_VERDICTS_MAX);

// A pending track, settled by user space's verdict when it has come: kept, or ended (the
// process is then tracked by its origin alone, if it has one). With no verdict it stays
// tracked for PENDING_NS after its exec, user space's time to judge, and then ends (a
// verdict it missed, or one the LRU dropped before the process made a socket call).
static __always_inline int still_tracked(struct proc *p)
{
    struct track_key key = {.ktime_ns = p->track_ktime_ns, .pid = p->track_pid};
    u32 *verdict = track_verdicts.lookup(&key);
    if (!verdict && bpf_ktime_get_ns() - p->track_ktime_ns < PENDING_NS)
        return 1;
    p->track_pending = 0;
    if (verdict && *verdict == TRACK_KEEP)
        return 1;
    p->track_ktime_ns = 0;
    p->track_pid = 0;
    return p->origin_ktime_ns != 0;
}

// The current process's slot when it is tracked.
static __always_inline struct proc *tracked_proc(void)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    struct proc *p = slot_of(pid);
    if (!p || p->pid != pid || !(p->track_ktime_ns | p->origin_ktime_ns))
        return 0;
    if (p->track_pending && !still_tracked(p))
        return 0;
    return p;
}

// The budget of a tracked process's slot: false (counted) when it is spent.
static __always_inline int charge(struct proc *p)
{
    if (!p->sock_budget) {
        count(C_SOCK_OVER_BUDGET);
        return 0;
    }
    p->sock_budget--;
    return 1;
}

// The current process's slot when it is tracked, charged one event of its budget: none when it is spent.
static __always_inline struct proc *tracked(void)
{
    struct proc *p = tracked_proc();
    return p && charge(p) ? p : 0;
}

static __always_inline void from_proc(struct sock_event *ev, struct proc *p, u16 action)
{
    ev->ktime_ns = bpf_ktime_get_ns();
    ev->cgroup_id = bpf_get_current_cgroup_id();
    ev->track_ktime_ns = p->track_ktime_ns;
    ev->track_pid = p->track_pid;
    ev->origin_ktime_ns = p->origin_ktime_ns;
    ev->origin_pid = p->origin_pid;
    ev->pid = p->pid;
    ev->uid = (u32)bpf_get_current_uid_gid();
    ev->action = action;
    __builtin_memcpy(ev->comm, p->comm, 16);
}

static __always_inline void own(struct owner *o, struct sock_event *ev, struct proc *p)
{
    o->track_ktime_ns = p->track_ktime_ns;
    o->origin_ktime_ns = p->origin_ktime_ns;
    o->cgroup_id = ev->cgroup_id;
    o->track_pid = p->track_pid;
    o->origin_pid = p->origin_pid;
    o->pid = p->pid;
    o->uid = ev->uid;
    __builtin_memcpy(o->comm, p->comm, 16);
}

static __always_inline void from_owner(struct sock_event *ev, struct owner *o, u16 action)
{
    ev->ktime_ns = bpf_ktime_get_ns();
    ev->action = action;
    ev->cgroup_id = o->cgroup_id;
    ev->track_ktime_ns = o->track_ktime_ns;
    ev->track_pid = o->track_pid;
    ev->origin_ktime_ns = o->origin_ktime_ns;
    ev->origin_pid = o->origin_pid;
    ev->pid = o->pid;
    ev->uid = o->uid;
    __builtin_memcpy(ev->comm, o->comm, 16);
}

// An event (a sock_event, or a dns_event's first size bytes) onto the ring buffer, counted.
static __always_inline void hand_over(void *event, u32 size)
{
    if (sock_events.ringbuf_output(event, size, 0))
        count(C_SOCK_LOST);
    else
        count(C_SOCK_EVENTS);
}

static __always_inline void send(struct sock_event *ev)
{
    hand_over(ev, sizeof(*ev));
}

// connect(): the destination the caller asked for.
static __always_inline int on_sock_addr(struct bpf_sock_addr *ctx, u16 action, int v6)
{
    struct proc *p = tracked();
    if (!p)
        return 1;
    struct sock_event ev = {};
    from_proc(&ev, p, action);
    ev.cookie = bpf_get_socket_cookie(ctx);
    ev.protocol = ctx->protocol;
    ev.remote_port = NTOHS((u16)ctx->user_port);
    if (v6) {
        ev.family = AF_INET6;
        COPY_IP6(ev.remote_addr, ctx->user_ip6);
    } else {
        ev.family = AF_INET;
        ev.remote_addr[0] = ctx->user_ip4;
    }
    send(&ev);
    int tcp = action == A_CONNECT && ev.protocol == IPPROTO_TCP, dns = ev.remote_port == DNS_PORT;
#if OUTCOMES_AT_TRACEPOINTS
    if (tcp) {   // its outcome is found by cookie (netutil_sk_error, netutil_tcp_destroy)
        u32 one = 1;
        connects.update(&ev.cookie, &one);
    }
    tcp = 0;
#endif
#if SENDS_AT_SYSCALL
    dns = 0;     // its questions are read at the send, not by the socket's storage
#endif
    if ((tcp || dns) && ctx->sk) {
        // The socket's storage, for the builds that read it: sock_ops (a TCP connect's
        // outcome) and egress (a DNS socket's questions).
        struct owner *o = reported_socks.sk_storage_get(ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
        if (o) {
            own(o, &ev, p);
            o->dns |= dns;
        }
    }
    return 1;   // allow: this program only watches
}

int netutil_connect4(struct bpf_sock_addr *ctx) { return on_sock_addr(ctx, A_CONNECT, 0); }
int netutil_connect6(struct bpf_sock_addr *ctx) { return on_sock_addr(ctx, A_CONNECT, 1); }

static __always_inline int on_bind(struct bpf_sock *sk, int v6)
{
    struct proc *p = tracked();
    if (!p)
        return 1;
    struct sock_event ev = {};
    from_proc(&ev, p, A_BIND);
    ev.cookie = bpf_get_socket_cookie(sk);
    ev.protocol = sk->protocol;
    ev.local_port = sk->src_port;
    if (v6) {
        ev.family = AF_INET6;
        COPY_IP6(ev.local_addr, sk->src_ip6);
    } else {
        ev.family = AF_INET;
        ev.local_addr[0] = sk->src_ip4;
    }
    send(&ev);
    return 1;
}

int netutil_post_bind4(struct bpf_sock *sk) { return on_bind(sk, 0); }
int netutil_post_bind6(struct bpf_sock *sk) { return on_bind(sk, 1); }

#if OUTCOMES_AT_TRACEPOINTS
// A socket's common fields (fields.py SPANS "SKE"), read in one span: its addresses into ev
// (of a connection a tracked listener accepted).
static __always_inline void skc_addrs(struct sock_event *ev, u8 *skc)
{
    SPAN_FIELD(ev->family, skc, SKE, OFF_SKC_FAMILY);
    ev->protocol = IPPROTO_TCP;
    SPAN_FIELD(ev->local_port, skc, SKE, OFF_SKC_NUM);   // host order; 0 once unhashed
    u16 dport = 0;
    SPAN_FIELD(dport, skc, SKE, OFF_SKC_DPORT);
    ev->remote_port = NTOHS(dport);
    if (ev->family == AF_INET6) {
        SPAN_FIELD(ev->local_addr, skc, SKE, OFF_SKC_V6_RCV_SADDR);
        SPAN_FIELD(ev->remote_addr, skc, SKE, OFF_SKC_V6_DADDR);
    } else {
        SPAN_FIELD(ev->local_addr[0], skc, SKE, OFF_SKC_RCV_SADDR);
        SPAN_FIELD(ev->remote_addr[0], skc, SKE, OFF_SKC_DADDR);
    }
}

// Whether a connect was answered: its SYN-ACK set rcv_nxt (0 from tcp_connect_init until
// then; a peer's sequence number can make it 0 again) and counted the SYN in bytes_acked.
static __always_inline int answered(void *sk)
{
    u32 rcv_nxt = 0;
    u64 bytes_acked = 0;
    FIELD(rcv_nxt, sk, OFF_TCP_RCV_NXT);
    FIELD(bytes_acked, sk, OFF_TCP_BYTES_ACKED);
    return rcv_nxt || bytes_acked;
}

// inet_sk_error_report(sk): an inet socket's error was set: the connect's answer was a
// reset, its SYNs went unanswered, an ICMP said unreachable, or its caller aborted it
// (ECONNRESET, ECONNABORTED with no answer); of a connect that was answered, a later
// error (then the answer is reported). Rare for most sockets; an error queue's reports
// (timestamps, zerocopy) come with no error and are left to tcp_destroy_sock.
int netutil_sk_error(struct bpf_raw_tracepoint_args *ctx)
{
    void *sk = (void *)ctx->args[0];
    struct sock_event ev = {};
    if (FIELD(ev.cookie, sk, OFF_SKC_COOKIE) || !ev.cookie || !connects.lookup(&ev.cookie))
        return 0;
    if (FIELD(ev.error, sk, OFF_SK_ERR) || !ev.error)
        return 0;
    connects.delete(&ev.cookie);
    ev.ktime_ns = bpf_ktime_get_ns();
    ev.action = A_OUTCOME;
    ev.status = answered(sk) ? S_ESTABLISHED
                : ev.error == ECONNRESET || ev.error == ECONNABORTED ? S_UNANSWERED : S_FAILED;
    send(&ev);   // named by its cookie: its connect's row has the addresses
    return 0;
}

// tcp_destroy_sock(sk): every TCP socket of the host ends here once, in whatever context
// (its last close, a timer, softirq). A socket costs one read (its cookie), a hash lookup
// if it has a cookie (sock_diag and other BPF programs give sockets one), and one array
// lookup (listen_ports[0]: tracked listeners in all). A connect that had no error says how
// it ended (answered; else a SYN counts in segs_out); while a tracked process listens, a
// connection on its port (listen_ports) and in its namespace (listen_at) is handed to user
// space, which knows the listener.
int netutil_tcp_destroy(struct bpf_raw_tracepoint_args *ctx)
{
    void *sk = (void *)ctx->args[0];
    struct sock_event ev = {};
    u8 skc[SKE_SPAN] = {};
    if (FIELD(ev.cookie, sk, OFF_SKC_COOKIE))
        return 0;
    if (ev.cookie && connects.lookup(&ev.cookie)) {
        connects.delete(&ev.cookie);
        u32 segs_out = 0;
        FIELD(segs_out, sk, OFF_TCP_SEGS_OUT);
        ev.ktime_ns = bpf_ktime_get_ns();
        ev.action = A_OUTCOME;
        ev.status = answered(sk) ? S_ESTABLISHED : segs_out ? S_UNANSWERED : S_NO_SYN;
        send(&ev);
        return 0;
    }
    u32 port = 0;
    u32 *n = listen_ports.lookup(&port);
    u16 sport = 0, dport = 0;
    if (!n || !*n || FIELD(sport, sk, OFF_INET_SPORT))
        return 0;
    port = NTOHS(sport);   // the socket's port (skc_num is 0 once it left the port's table)
    if (!port)
        return 0;   // never bound: [0] is the count in all
    n = listen_ports.lookup(&port);
    if (!n || !*n || SPAN_READ(skc, sk, SKE))
        return 0;
    SPAN_FIELD(dport, skc, SKE, OFF_SKC_DPORT);
    void *net = 0;
    SPAN_FIELD(net, skc, SKE, OFF_SKC_NET);
    if (!dport || FIELD(ev.netns, net, OFF_NET_INUM))
        return 0;   // a listener itself: no peer
    struct listen_at_key at = {.netns = ev.netns, .port = port};
    if (!listen_at.lookup(&at))
        return 0;   // the port of a tracked listener in another namespace
    ev.ktime_ns = bpf_ktime_get_ns();
    ev.action = A_PEER_END;
    skc_addrs(&ev, skc);
    ev.local_port = port;
    send(&ev);
    return 0;
}
#else
// The addresses of a TCP socket as sock_ops sees them.
static __always_inline void tcp_addrs(struct sock_event *ev, struct bpf_sock_ops *skops)
{
    ev->family = skops->family;
    ev->protocol = IPPROTO_TCP;
    ev->local_port = skops->local_port;                     // host order
    ev->remote_port = NTOHS(skops->remote_port >> 16);  // network order, in the high half
    if (skops->family == AF_INET6) {
        COPY_IP6(ev->local_addr, skops->local_ip6);
        COPY_IP6(ev->remote_addr, skops->remote_ip6);
    } else {
        ev->local_addr[0] = skops->local_ip4;
        ev->remote_addr[0] = skops->remote_ip4;
    }
}

static __always_inline void outcome(struct bpf_sock_ops *skops, u16 status)
{
    struct sock_event ev = {};
    ev.ktime_ns = bpf_ktime_get_ns();
    ev.action = A_OUTCOME;
    ev.status = status;
    ev.error = status == S_FAILED ? EHOSTUNREACH : 0;
    ev.cookie = bpf_get_socket_cookie(skops);
    ev.retrans = skops->segs_in ? 0 : skops->total_retrans;   // a reset after SYNs sent again is a refusal
    tcp_addrs(&ev, skops);
    send(&ev);
}

// How a connect closed in SYN_SENT: a reset answered (a segment came in), the SYNs went
// unanswered (sent again), or neither: its caller closed it (in the caller's own context),
// or an ICMP error did (in another's: softirq; sock_ops is not told the error).
static __always_inline u16 closed(struct bpf_sock_ops *skops)
{
    if (skops->segs_in || skops->total_retrans)
        return S_CLOSED;
    struct bpf_sock *sk = skops->sk;
    struct owner *o = sk ? reported_socks.sk_storage_get(sk, 0, 0) : 0;
    return o && o->pid == bpf_get_current_pid_tgid() >> 32 ? S_UNANSWERED : S_FAILED;
}

int netutil_sock_ops(struct bpf_sock_ops *skops)
{
    u32 op = skops->op;
    if (op == BPF_SOCK_OPS_TCP_CONNECT_CB) {
        // In the connecting process, after connect4: the SYN is about to leave. Only for a
        // connect that was reported (within the budget), at no charge of its own.
        struct bpf_sock *sk = skops->sk;
        if (!sk || !tracked_proc() || !reported_socks.sk_storage_get(sk, 0, 0))
            return 1;
        bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
        outcome(skops, S_SYN_SENT);
    } else if (op == BPF_SOCK_OPS_STATE_CB) {
        // Only sockets whose flags a tracked process set above or below.
        u32 old = skops->args[0], now = skops->args[1];
        if (old == BPF_TCP_SYN_SENT && (now == BPF_TCP_ESTABLISHED || now == BPF_TCP_CLOSE)) {
            outcome(skops, now == BPF_TCP_ESTABLISHED ? S_ESTABLISHED : closed(skops));
            bpf_sock_ops_cb_flags_set(skops, 0);   // nothing more of this socket
        } else if (old == BPF_TCP_LISTEN) {
            struct listen_key key = {.netns = bpf_get_netns_cookie(skops), .port = skops->local_port};
            if (listeners.delete(&key) == 0) {
                u32 port = skops->local_port & 0xffff;
                u32 *n = listen_ports.lookup(&port);
                if (n && *n)
                    __sync_fetch_and_add(n, -1);
            }
        }
    } else if (op == BPF_SOCK_OPS_TCP_LISTEN_CB) {
        struct proc *p = tracked();
        if (!p)
            return 1;
        struct sock_event ev = {};
        from_proc(&ev, p, A_LISTEN);
        ev.cookie = bpf_get_socket_cookie(skops);
        tcp_addrs(&ev, skops);
        send(&ev);
        struct listen_key key = {.netns = bpf_get_netns_cookie(skops), .port = skops->local_port};
        struct owner l = {};
        own(&l, &ev, p);
        int known = listeners.lookup(&key) != 0;
        if (listeners.update(&key, &l) == 0 && !known) {   // counted only once in the map
            u32 port = skops->local_port & 0xffff;
            u32 *n = listen_ports.lookup(&port);
            if (n)
                __sync_fetch_and_add(n, 1);
        }
        bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);   // to forget it when it closes
    } else if (op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
        // A connection a listener accepted (softirq): one array lookup unless it is a tracked one's.
        u32 port = skops->local_port & 0xffff;
        u32 *n = listen_ports.lookup(&port);
        if (!n || !*n)
            return 1;
        struct listen_key key = {.netns = bpf_get_netns_cookie(skops), .port = skops->local_port};
        struct owner *l = listeners.lookup(&key);
        if (!l)
            return 1;
        struct proc *owner = slot_of(l->pid);
        if (owner && owner->pid == l->pid && !charge(owner))   // the listener's budget
            return 1;
        struct sock_event ev = {};
        from_owner(&ev, l, A_ACCEPT);
        ev.cookie = bpf_get_socket_cookie(skops);
        tcp_addrs(&ev, skops);
        send(&ev);
    }
    return 1;
}
#endif
