"""The kernel side: the eBPF program's loader and reader, its self-check, BTF offsets."""
