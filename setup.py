"""Thin setuptools shim: CMake builds the pybind11 extension ``afd_trt._C``.

Metadata and dependencies live in pyproject.toml (the one source of truth).
Build switches: AFD_TRT_BUILD_TYPE (Release), AFD_TRT_SANITIZE (OFF; "address,undefined"
for an ASan+UBSan build), CMAKE_BUILD_PARALLEL_LEVEL.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class CMakeExtension(Extension):
    def __init__(self, name: str, source_dir: str = ".") -> None:
        super().__init__(name, sources=[])
        self.source_dir = str(Path(source_dir).resolve())


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        assert isinstance(ext, CMakeExtension)
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_type = os.environ.get("AFD_TRT_BUILD_TYPE", "Release")
        sanitize = os.environ.get("AFD_TRT_SANITIZE", "")
        version = self.distribution.get_version()
        args = [
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DAFD_TRT_VERSION={version}",
            f"-DAFD_TRT_SANITIZE={sanitize}",
        ]
        build_temp = Path(self.build_temp) / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        print(f"afd_trt: cmake {' '.join(args)}", flush=True)
        subprocess.run(["cmake", "-S", ext.source_dir, "-B", str(build_temp), *args], check=True)
        subprocess.run(["cmake", "--build", str(build_temp), "--config", build_type], check=True)


setup(ext_modules=[CMakeExtension("afd_trt._C")], cmdclass={"build_ext": CMakeBuild})
