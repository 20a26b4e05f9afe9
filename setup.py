# The native core is a cffi extension; its builder lives in
# dataplane/_build_native.py and reads the C headers in native/. The XDP
# programs in ebpf/ are compiled ahead of time by ebpf/build.py into
# dataplane/bpf/ (package data) with build_py, which editable installs run
# too: nothing is compiled on an exit node at run time.
import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class build_py_with_bpf(build_py):
    def run(self):
        spec = importlib.util.spec_from_file_location("ebpf_build", ROOT / "ebpf" / "build.py")
        ebpf_build = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ebpf_build)
        ebpf_build.build(ROOT / "dataplane" / "bpf", progress=print)
        super().run()


setup(
    cffi_modules=["dataplane/_build_native.py:ffibuilder"],
    cmdclass={"build_py": build_py_with_bpf},
)
