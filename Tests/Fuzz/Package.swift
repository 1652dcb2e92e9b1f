// swift-tools-version:6.1
// libFuzzer targets for every decoder that reads bytes from a peer or text from a user, kept in
// their own package (as Benchmarks/ is) so the main package builds without the fuzzer runtime.
// Build and run every target from this folder with `./run.sh [SECONDS]`; one target by hand:
//   swift build -c release --sanitize=fuzzer -Xswiftc -sanitize=fuzzer,address   (run.sh says why)
//   mkdir -p /tmp/new && .build/release/fuzz-frame-header /tmp/new corpus/frame-header -max_total_time=60
// (new inputs go to the first folder: keep the committed seeds second).
// Each executable defines `LLVMFuzzerTestOneInput`; libFuzzer provides `main`.
import PackageDescription

/// One executable per fuzz target, named `fuzz-<target>`, its seeds in `corpus/<target>/`.
let targets = ["frame-header", "payloads", "preamble", "lz4", "vfio-stream", "extent-table", "specs"]

let package = Package(
    name: "DeviceStreamFuzz",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "DeviceStream", path: "../.."),
    ],
    targets: [
        // The input cursor, the invariant check, and the control-payload dispatch that the
        // frame-header and payloads targets share.
        .target(
            name: "FuzzSupport",
            dependencies: [.product(name: "DeviceStream", package: "DeviceStream")],
            path: "Sources/FuzzSupport"
        ),
    ] + targets.map { name in
        .executableTarget(
            name: "fuzz-\(name)",
            dependencies: [
                "FuzzSupport",
                .product(name: "DeviceStream", package: "DeviceStream"),
                .product(name: "DSSimulation", package: "DeviceStream"),
            ],
            path: "Sources/\(name)"
        )
    },
    swiftLanguageModes: [.v6]
)
