// swift-tools-version:6.1
import PackageDescription

// Layers, dependencies pointing one way:
//   CURing CLZ4 CXXHash COpenSSL  system libraries (one shim header each)
//   DSSupport                  the floor: lock + condition, clock + sleep, threads, errno, warnings,
//                              hex, little-endian, the size/duration grammar, file-system facts
//   DSWire                     wire format v3: pure, no I/O, no threads
//   DSCodec                    LZ4 block codec + XXH3 (imports CLZ4, CXXHash)
//   DSRing                     io_uring + blocking fallback, buffer pool (imports CURing)
//   DSTransport                channels (thread + ring + socket, TLS 1.3 via COpenSSL), point-to-point transfer
//   DSScheduler                pre-copy scheduler: pure state machine
//   DSDevices                  device protocol, VFIO state machine + UAPI, the shared device core,
//                              the file: and vfio: devices
//   DeviceStream               migration sessions + the embedding API (the one library product)
//   DSSimulation               fixtures, not in the library: sim: and vfio-emu: devices, content
//                              generator, dirtying workload, VFIO v1 model, device spec strings
//   DSCLISupport               option parsers, byte formatting, terminal + JSON output (CLIs only)
//   devstream, stream-bench    executables
//   DSNetLab                   namespaces + shaped veth links for tests and stream-bench
let package = Package(
    name: "DeviceStream",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "DeviceStream", targets: ["DeviceStream"]),
        // The fixtures, as a product only so the Benchmarks package can fill chunks with them;
        // embedders never need it.
        .library(name: "DSSimulation", targets: ["DSSimulation"]),
        // The C ABI (devicestream.h): build it with `Tests/CABI/build-library.sh`, which links the
        // Swift runtime in statically and sets the SONAME.
        .library(name: "devicestream", type: .dynamic, targets: ["DeviceStreamC"]),
        .executable(name: "devstream", targets: ["devstream"]),
        .executable(name: "stream-bench", targets: ["stream-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        .systemLibrary(name: "CURing", path: "Sources/CURing"),
        .systemLibrary(name: "CLZ4", path: "Sources/CLZ4"),
        .systemLibrary(name: "CXXHash", path: "Sources/CXXHash"),
        .systemLibrary(name: "COpenSSL", path: "Sources/COpenSSL"),
        .target(name: "DSSupport"),
        .target(name: "DSWire", dependencies: ["DSSupport"], exclude: ["WIRE.md"]),
        .target(name: "DSCodec", dependencies: ["CLZ4", "CXXHash", "DSWire", "DSSupport"]),
        .target(name: "DSRing", dependencies: ["CURing", "DSSupport"]),
        .target(name: "DSDevices", dependencies: ["CXXHash", "DSSupport", "DSRing"]),
        .target(name: "DSScheduler"),
        .target(name: "DSTransport", dependencies: ["DSSupport", "DSWire", "DSCodec", "DSRing", "COpenSSL"]),
        .target(name: "DeviceStream", dependencies: ["DSSupport", "DSWire", "DSCodec", "DSRing", "DSTransport", "DSDevices", "DSScheduler"]),
        // Simulated devices and their parts (DeviceSpec makes them); used by the CLI, stream-bench
        // and the tests, not part of the DeviceStream library.
        .target(name: "DSSimulation", dependencies: ["DSDevices", "DSSupport"]),
        // Shared by devstream and stream-bench: option parsers, byte formatting, terminal and JSON output.
        .target(name: "DSCLISupport", dependencies: [
            "DeviceStream", "DSSupport", "DSWire", "DSCodec", "DSRing", "DSTransport", "DSDevices", "DSScheduler", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "devstream", dependencies: [
            "DeviceStream", "DSSimulation", "DSCLISupport", "DSSupport", "DSWire", "DSCodec", "DSRing", "DSTransport", "DSDevices", "DSScheduler",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // The C ABI: the header (the contract) as a C target, and its Swift implementation.
        .target(name: "CDeviceStream"),
        .target(name: "DeviceStreamC", dependencies: [
            "CDeviceStream", "DeviceStream", "DSSimulation", "DSSupport", "DSTransport", "DSDevices", "DSScheduler",
        ], exclude: ["devicestream.map"]),
        // The README's embedding example, one program per role; they import DeviceStream only.
        .executableTarget(name: "example-source", dependencies: ["DeviceStream"]),
        .executableTarget(name: "example-destination", dependencies: ["DeviceStream"]),
        // Network namespaces joined by a shaped veth pair, for tests and stream-bench; not a product.
        .target(name: "DSNetLab", dependencies: ["DSSupport"]),
        .executableTarget(name: "stream-bench", dependencies: [
            "DeviceStream", "DSSimulation", "DSNetLab", "DSCLISupport", "DSSupport", "DSWire", "DSCodec", "DSRing", "DSTransport", "DSDevices", "DSScheduler",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // Shared by the test targets (a fault-injecting proxy, data helpers); not a product.
        .target(name: "DSTestSupport", dependencies: ["DSTransport", "DSWire", "DSCodec", "DSRing", "DSDevices"], path: "Tests/DSTestSupport"),
        .testTarget(name: "DSSupportTests", dependencies: ["DSSupport"]),
        .testTarget(name: "DSWireTests", dependencies: ["DSWire"]),
        .testTarget(name: "DSCodecTests", dependencies: ["DSCodec", "CXXHash"]),
        .testTarget(name: "DSRingTests", dependencies: ["DSRing"]),
        .testTarget(name: "DSTransportTests", dependencies: ["DSTransport", "DSCodec", "DSTestSupport"]),
        .testTarget(name: "DSDevicesTests", dependencies: ["DSDevices", "DSTestSupport", "CXXHash"]),
        .testTarget(name: "DSSimulationTests", dependencies: ["DSSimulation", "DSDevices", "DSSupport", "DSTestSupport"]),
        .testTarget(name: "DSSchedulerTests", dependencies: ["DSScheduler"]),
        .testTarget(name: "EndToEndTests", dependencies: [
            "DeviceStream", "DSSimulation", "DSTestSupport", "DSNetLab", "DSCLISupport", "DSSupport", "DSWire", "DSCodec", "DSRing", "DSTransport", "DSDevices", "DSScheduler",
        ]),
    ],
    swiftLanguageModes: [.v6]
)
