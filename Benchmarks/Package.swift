// swift-tools-version:6.1
// package-benchmark suites for the hot path, kept in their own package so embedders of
// DeviceStream never resolve package-benchmark (as swift-nio does). Run from this folder:
//   swift package --disable-sandbox benchmark
import PackageDescription

let package = Package(
    name: "DeviceStreamBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "DeviceStream", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "DataPath",
            dependencies: [
                .product(name: "DeviceStream", package: "DeviceStream"),
                .product(name: "DSSimulation", package: "DeviceStream"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "DataPath",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
