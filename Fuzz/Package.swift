// swift-tools-version:6.0
// Coverage-guided fuzzers (libFuzzer) of what dlmd reads from others: `make fuzz` builds them with
// `-sanitize=fuzzer` and runs each for a while (Fuzz/README.md). Built apart from the main package, since every
// module of a fuzzer's build is instrumented.
import Foundation
import PackageDescription

/// The main package is the folder above; SwiftPM names it after that folder, whatever the clone is called.
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .lastPathComponent.lowercased()

/// libFuzzer brings `main`: the targets are libraries to Swift (`-parse-as-library`), and each defines the
/// `<target>_main` that SwiftPM links an executable against, which hands over to libFuzzer's driver.
let fuzzerSettings: [SwiftSetting] = [.unsafeFlags(["-parse-as-library"])]

let package = Package(
    name: "swift-dlm-fuzz",
    dependencies: [.package(path: "..")],
    targets: [
        .target(name: "FuzzSupport"),
        .executableTarget(
            name: "FuzzClientFrames",
            dependencies: ["FuzzSupport", .product(name: "DLMWire", package: root)],
            swiftSettings: fuzzerSettings),
        .executableTarget(
            name: "FuzzPeerFrames",
            dependencies: [
                "FuzzSupport", .product(name: "DLMWire", package: root), .product(name: "GroupNode", package: root),
                .product(name: "GroupServices", package: root),
            ],
            swiftSettings: fuzzerSettings),
        .executableTarget(
            name: "FuzzConfig", dependencies: ["FuzzSupport", .product(name: "GroupNode", package: root)],
            swiftSettings: fuzzerSettings),
        .executableTarget(
            name: "FuzzWriteAheadLog", dependencies: ["FuzzSupport", .product(name: "DLMStore", package: root)],
            swiftSettings: fuzzerSettings),
    ]
)
