"""Builds kvtier._kvtier through the project's CMake build and ships libkvtier.so.0 next to
it (the extension's RPATH is $ORIGIN).  Configuration lives in pyproject.toml."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
# Build products stay out of the source tree (/build*/ is ignored by git).
OUT = REPO / "build-python-wheel"
OUT.mkdir(exist_ok=True)


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        if not (REPO / "CMakeLists.txt").exists():
            raise RuntimeError("kvtier's Python module builds from a kvtier checkout "
                               "(pip install ./libclient/python from the repository root)")
        build = OUT / "cmake"
        build.mkdir(parents=True, exist_ok=True)
        subprocess.check_call([
            "cmake", "-S", str(REPO), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
            "-DKVTIER_BENCH=OFF", "-DKVTIER_CUDA=OFF", "-DBUILD_TESTING=OFF",
            "-DKVTIER_PYTHON=" + sys.executable, "-DKVTIER_PYTHON_RPATH_ORIGIN=ON"])
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        subprocess.check_call(["cmake", "--build", str(build), "--target", "_kvtier", "-j", jobs])
        target = Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build / "libclient/python/kvtier" / target.name, target)
        # The SONAME the extension links against, as a real file (not a symlink).
        shutil.copy(build / "libclient/libkvtier.so.0", target.parent / "libkvtier.so.0")


setup(ext_modules=[Extension("kvtier._kvtier", sources=[])], cmdclass={"build_ext": CMakeBuild},
      options={"build": {"build_base": str(OUT / "setuptools")},
               "egg_info": {"egg_base": str(OUT)}})
