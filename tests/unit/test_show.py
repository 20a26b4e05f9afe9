"""What `dataplane show` (and the demo's summary) list as drops, and how
it reads the backend and the AmneziaWG obfuscation, from the status
socket's figures."""
from dataplane.commands import all_drops, backend_summary, obfuscation_summary
from dataplane.obfuscation import PLAIN, Obfuscation


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


def test_the_obfuscation_line_lists_what_differs_from_plain_wireguard():
    profile = Obfuscation.from_settings({
        "Jc": 4, "Jmin": 40, "Jmax": 70, "S1": 15, "S2": 18, "S3": 20, "S4": 8,
        "H1": "1000000-1000999", "H2": "2000000-2000999", "H3": "3000000-3000999",
        "H4": "4000000-4000999", "I1": "<b 0xc0ffee><r 12><t>", "I3": "<t>"})
    status = {"obfuscation": profile.as_json(), "accept_plain_wireguard": False}
    assert obfuscation_summary(status) == (
        "amneziawg (S1 15, S2 18, S3 20, S4 8, H1 1000000-1000999, H2 2000000-2000999, "
        "H3 3000000-3000999, H4 4000000-4000999, Jc 4 of 40-70 B, I1 set, I3 set)")
    status["accept_plain_wireguard"] = True
    assert obfuscation_summary(status).endswith("I3 set), plain WireGuard accepted too")
    headers_only = Obfuscation.from_settings({"H1": 5, "H2": 6, "H3": 7, "H4": 8})
    assert obfuscation_summary({"obfuscation": headers_only.as_json()}) == \
        "amneziawg (H1 5, H2 6, H3 7, H4 8)"


def test_plain_wireguard_says_off():
    assert obfuscation_summary({"obfuscation": PLAIN.as_json()}) == "off (plain WireGuard)"
    # an older daemon's figures, without the key
    assert obfuscation_summary({}) == "off (plain WireGuard)"
    # junk and signatures alone change only what this side sends before it initiates
    initiator = Obfuscation.from_settings({"Jc": 2, "Jmin": 9, "Jmax": 9, "I2": "<t>"})
    assert obfuscation_summary({"obfuscation": initiator.as_json(),
                                "accept_plain_wireguard": False}) == \
        "off (plain WireGuard; before our initiations: Jc 2 of 9-9 B, I2 set)"
