"""The XDP programs, compiled from ebpf/ by ebpf/build.py at build time
(*.bpf.o; see dataplane.xdp.object_path)."""
