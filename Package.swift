// swift-tools-version:6.1
import PackageDescription

// The tests that drive real processes, sockets and LMDB files spend their time waiting, not computing: they are
// compiled without optimization even in make test's release build, which takes about a minute and a half off it on
// a 2-vCPU machine (IntegrationTests alone: 83 s optimized, 25 s not). The tests whose own code is hot (the
// reference model, the simulations, the random traffic harness) stay optimized: unoptimized, they ran 10 times
// slower.
let driverTestSettings: [SwiftSetting] = [.unsafeFlags(["-Onone"])]

let package = Package(
    name: "swift-dlm",
    products: [
        .library(name: "DLMCore", targets: ["DLMCore"]),
        .library(name: "DLMWire", targets: ["DLMWire"]),
        .library(name: "DLMClient", targets: ["DLMClient"]),
        .library(name: "GroupServices", targets: ["GroupServices"]),
        .library(name: "GroupNode", targets: ["GroupNode"]),
        .library(name: "DLMStore", targets: ["DLMStore"]),
        .executable(name: "dlmd", targets: ["dlmd"]),
        .executable(name: "dlmtool", targets: ["dlmtool"]),
        .executable(name: "dlmbench", targets: ["dlmbench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-collections", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
    ],
    targets: [
        // The lock engine: a pure, deterministic state machine (no I/O, no clock).
        .target(
            name: "DLMCore",
            dependencies: [
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "HeapModule", package: "swift-collections"),
            ]
        ),
        // Group services (docs/GROUPS.md): liveness, agreed views, quorum, fencing, ordered messaging, barriers,
        // process groups. A pure, deterministic state machine per node, like DLMCore.
        .target(name: "GroupServices"),
        // The shell of group services: the config file (TOML: the cluster's tables and dlmd's own), the cluster key,
        // the authenticated peer transport over TCP, the fence command, and the driver that runs one GroupMember on
        // an event loop.
        .target(
            name: "GroupNode",
            dependencies: [
                "GroupServices", "TOMLKit", "CDLMCrypto", "CDLMCorosync",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // One node's lock manager as a pure state machine (LockService): client frames, views and commits in, one
        // batch of frames, store changes and closes out. No I/O, no clock.
        .target(
            name: "DLMCluster",
            dependencies: [
                "DLMCore", "DLMWire", "GroupServices",
                .product(name: "DequeModule", package: "swift-collections"),
            ]
        ),
        // The client protocol of Protocol/CLIENT.md: messages and their codec.
        .target(
            name: "DLMWire",
            dependencies: [
                "DLMCore", .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ]
        ),
        // Debian's liblmdb-dev (pkg-config "lmdb").
        .systemLibrary(
            name: "CLMDB",
            pkgConfig: "lmdb",
            providers: [.apt(["liblmdb-dev"])]
        ),
        // HMAC-SHA256 and SHA-256 for the peer transport, from the system's libcrypto (Debian's libssl-dev).
        // (Not swift-crypto: on Linux it compiles its own copy of BoringSSL, which was 6 of the 14 minutes of
        // make test's build on this 2-vCPU machine.)
        .target(name: "CDLMCrypto", linkerSettings: [.linkedLibrary("crypto")]),
        // TLS for TCP clients over the system's libssl (OpenSSL 3, Debian's libssl-dev), through memory BIOs, and
        // its channel handler. (Not swift-nio-ssl: it compiles its own BoringSSL, about 6 minutes of make test's
        // build on this 2-vCPU machine, which its 15-minute limit has no room for.)
        .target(name: "CDLMTLS", linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto")]),
        .target(name: "DLMTLS", dependencies: ["CDLMTLS", .product(name: "NIOCore", package: "swift-nio")]),
        // corosync 3's CPG, votequorum and cmap, for the corosync provider of group services (Debian's libcpg-dev,
        // libvotequorum-dev, libcmap-dev, libcorosync-common-dev).
        .target(
            name: "CDLMCorosync",
            linkerSettings: [
                .linkedLibrary("cpg"), .linkedLibrary("votequorum"), .linkedLibrary("cmap"),
                .linkedLibrary("corosync_common"),
            ]),
        // What the C library has that Swift's Glibc module lacks (malloc tuning).
        .target(name: "CDLMSystem"),
        // The node's recoverable state in LMDB: environment, tables, transactions, the node's schema.
        .target(name: "DLMStore", dependencies: ["CLMDB", "DLMCore"]),
        // The node shell: serves the engine over sockets from one event loop.
        .target(
            name: "DLMNode",
            dependencies: [
                "DLMCore", "DLMCluster", "DLMWire", "DLMStore", "GroupNode", "GroupServices", "CDLMSystem", "DLMTLS",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ]
        ),
        // The embeddable Swift client.
        .target(
            name: "DLMClient",
            dependencies: [
                "DLMCore", "DLMWire", "DLMTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "dlmd",
            dependencies: [
                "DLMNode", "GroupNode", "DLMTLS",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "dlmtool",
            dependencies: [
                "CDLMSystem", "DLMClient", "DLMWire", "GroupNode",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Tools/dlmtool"
        ),
        .executableTarget(
            name: "dlmbench",
            dependencies: [
                "CDLMSystem", "DLMCore", "DLMClient", "DLMStore", "DLMTestSupport", "DLMWire", "GroupNode",
                "GroupServices",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "bench/dlmbench"
        ),
        // What the tests and the benchmarks share: the seeded generator, real dlmd processes and the lines they
        // print, free ports, CPU readings. Not a product: nothing outside this package uses it.
        .target(name: "DLMTestSupport"),
        .testTarget(name: "DLMCoreTests", dependencies: ["DLMCore", "DLMTestSupport"]),
        .testTarget(name: "GroupServicesTests", dependencies: ["GroupServices", "DLMTestSupport"]),
        .testTarget(
            name: "DLMClusterTests",
            dependencies: ["DLMCluster", "DLMCore", "DLMWire", "GroupServices", "DLMTestSupport"]),
        .testTarget(
            name: "GroupNodeTests",
            dependencies: [
                "GroupNode", "GroupServices", "DLMTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: driverTestSettings
        ),
        .testTarget(
            name: "DLMWireTests",
            dependencies: [
                "DLMWire", "DLMCore", "DLMTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "DLMStoreTests", dependencies: ["DLMStore", "DLMTestSupport"], swiftSettings: driverTestSettings),
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "DLMClient", "DLMWire", "DLMTestSupport", "DLMTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: driverTestSettings
        ),
    ]
)
