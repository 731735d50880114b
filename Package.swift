// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "swift-dlm",
    products: [
        .library(name: "DLMCore", targets: ["DLMCore"]),
        .executable(name: "dlmbench", targets: ["dlmbench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-collections", from: "1.1.0")
    ],
    targets: [
        .target(
            name: "DLMCore",
            dependencies: [
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "HeapModule", package: "swift-collections"),
            ]
        ),
        .executableTarget(
            name: "dlmbench",
            dependencies: ["DLMCore"],
            path: "bench/dlmbench"
        ),
        .testTarget(name: "DLMCoreTests", dependencies: ["DLMCore"]),
    ]
)
