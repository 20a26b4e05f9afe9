"""Benchmarks behind `dataplane bench <scenario>`: one module per scenario,
each providing add_parser(subparsers) and run(args) -> int."""
