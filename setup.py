# The native core is a cffi extension; its builder lives in
# dataplane/_build_native.py and reads the C headers in native/.
from setuptools import setup

setup(cffi_modules=["dataplane/_build_native.py:ffibuilder"])
