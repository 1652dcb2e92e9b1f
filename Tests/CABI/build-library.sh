#!/usr/bin/env bash
# Builds libdevicestream.so.1 (the C ABI) into DIR with its header and a pkg-config file:
#   DIR/lib/libdevicestream.so.1, DIR/lib/libdevicestream.so -> .so.1, DIR/include/devicestream.h,
#   DIR/lib/pkgconfig/devicestream.pc
# The Swift runtime is linked in statically (a C program needs no Swift toolchain), only ds_*
# symbols are exported (a version script), and the SONAME carries the ABI major.
# Usage: Tests/CABI/build-library.sh [DIR]   (default .build/cabi; CONFIG=debug for a debug build)
set -euo pipefail
cd "$(dirname "$0")/../.."
dir="${1:-.build/cabi}"
config="${CONFIG:-release}"
swift build -c "$config" --product devicestream \
    -Xswiftc -static-stdlib \
    -Xlinker --version-script="$PWD/Sources/DeviceStreamC/devicestream.map" \
    -Xlinker -soname=libdevicestream.so.1 >&2
mkdir -p "$dir/lib/pkgconfig" "$dir/include"
dir="$(cd "$dir" && pwd)"
cp "$(swift build -c "$config" --show-bin-path)/libdevicestream.so" "$dir/lib/libdevicestream.so.1"
strip --strip-unneeded "$dir/lib/libdevicestream.so.1"
ln -sf libdevicestream.so.1 "$dir/lib/libdevicestream.so"
cp Sources/CDeviceStream/include/devicestream.h "$dir/include/"
cat > "$dir/lib/pkgconfig/devicestream.pc" <<PC
prefix=$dir
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: devicestream
Description: DeviceStream live device-state migration engine (C ABI)
Version: 1.0.0
Libs: -L\${libdir} -ldevicestream -Wl,-rpath,\${libdir}
Libs.private: -luring -llz4 -lxxhash -lssl -lcrypto
Cflags: -I\${includedir}
PC
echo "$dir"
