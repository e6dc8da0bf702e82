"""Build of hashlab's one compiled module, hashlab._C, from src_cpp/.

Kernel sources named *_avx2.cpp / *_avx512.cpp / *_avx512bf16.cpp are compiled with that
instruction set enabled; everything else with the x86-64 baseline. The choice among them is
made at run time (src_cpp/dispatch.cpp), never by compiling for the build machine's CPU.
A compiler without -mavx512bf16 builds that file without its kernels (the level is then
reported unsupported).
"""
import glob
import os

from pybind11.setup_helpers import Pybind11Extension, ParallelCompile, build_ext, has_flag
from setuptools import setup

AVX512 = ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma", "-mbmi2", "-mpopcnt"]
ISA_FLAGS = {
    "_avx2.cpp": ["-mavx2", "-mfma", "-mbmi2", "-mpopcnt"],
    "_avx512.cpp": AVX512,
    "_avx512bf16.cpp": AVX512,  # + -mavx512bf16 where the compiler has it (build_extensions)
}
# -ffp-contract=off: no fused multiply-add anywhere, so every SIMD level (and the
# numba twins) round identically and hash codes are bit-for-bit the same.
COMMON_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-Wall", "-Wno-unknown-pragmas", "-Wno-psabi"]


class IsaBuildExt(build_ext):
    """build_ext that adds per-file instruction-set flags."""

    def build_extensions(self):
        original = self.compiler._compile
        flags = dict(ISA_FLAGS)
        if has_flag(self.compiler, "-mavx512bf16"):
            flags["_avx512bf16.cpp"] = AVX512 + ["-mavx512bf16"]

        def _compile(obj, src, ext, cc_args, extra_postargs, pp_opts):
            extra = list(extra_postargs)
            for suffix, isa in flags.items():
                if src.endswith(suffix):
                    extra += isa
            return original(obj, src, ext, cc_args, extra, pp_opts)

        self.compiler._compile = _compile
        super().build_extensions()


ParallelCompile("HASHLAB_BUILD_JOBS", default=os.cpu_count() or 2).install()

sources = sorted(glob.glob("src_cpp/*.cpp") + glob.glob("src_cpp/kernels/*.cpp") +
                 glob.glob("src_cpp/bindings/*.cpp"))

# headers and the per-level kernel bodies (*.inc): an edit to one rebuilds the module
depends = sorted(glob.glob("src_cpp/**/*.h", recursive=True) + glob.glob("src_cpp/**/*.inc", recursive=True))

ext = Pybind11Extension(
    "hashlab._C",
    sources,
    depends=depends,
    include_dirs=["src_cpp", "src_cpp/include"],
    cxx_std=17,
    extra_compile_args=COMMON_FLAGS,
    extra_link_args=["-pthread"],
)

setup(ext_modules=[ext], cmdclass={"build_ext": IsaBuildExt})
