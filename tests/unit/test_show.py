"""What `dataplane show` (and the demo's summary) list as drops, from the
status socket's figures."""
from dataplane.commands import all_drops, backend_summary


def test_the_socket_backend_lists_its_nonzero_data_path_drops():
    status = {"backend": "socket", "xdp": None,
              "drops": {"replay": 3, "bad_mac": 0, "unknown_index": 1}}
    assert all_drops(status) == {"replay": 3, "unknown_index": 1}


def test_the_xdp_backend_adds_the_programs_and_the_af_xdp_sockets_drops():
    status = {"backend": "xdp", "drops": {"replay": 0, "not_allowed": 2},
              "xdp": {"wan_steer_data": 900, "wan_pass": 12, "wan_drop_wg_bad_size": 5,
                      "wan_drop_ratelimited": 0, "wan_xsk_tx": 40, "outer_routes": 1,
                      "xsk_wan_rx_dropped": 7, "xsk_wan_rx_ring_full": 0,
                      "xsk_wan_rx_fill_ring_empty_descs": 7, "xsk_wan_tx_ring_empty_descs": 30,
                      "xsk_inner_rx_ring_full": 4, "xsk_inner_tx_invalid_descs": 0}}
    # counts of empty rings, steered and sent packets are not drops
    assert all_drops(status) == {"not_allowed": 2, "wan_drop_wg_bad_size": 5,
                                 "xsk_wan_rx_dropped": 7, "xsk_inner_rx_ring_full": 4}


def test_nothing_dropped_is_an_empty_list():
    assert all_drops({"drops": {"replay": 0}, "xdp": {"xsk_wan_rx_dropped": 0}}) == {}
    assert all_drops({}) == {}


def test_the_backend_line_says_which_workers_the_kernel_runs_real_time():
    base = {"backend": "socket", "workers": 2}
    other = {"policy": "other", "priority": 0}
    fifo = {"policy": "fifo", "priority": 3}
    assert backend_summary({**base, "scheduling": [other, other]}) == "socket, 2 worker(s)"
    assert backend_summary({**base, "scheduling": [fifo, fifo]}) == \
        "socket, 2 worker(s), real-time workers (SCHED_FIFO 3)"
    # what the kernel holds, also when a worker is not what the file asked for
    assert backend_summary({**base, "scheduling": [fifo, other]}) == \
        "socket, 2 worker(s), 1 of 2 real-time workers (SCHED_FIFO 3)"
    assert backend_summary(base) == "socket, 2 worker(s)"
