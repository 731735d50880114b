import FuzzSupport
import GroupNode

/// The config file as dlmd reads it (TOML: the cluster's name, nodes, addresses, votes, key file, fence command,
/// timeouts, and dlmd's own `[dlmd]` table): any text, valid or not, is a config or an error, never a trap, and a
/// cluster config that parses is checked as dlmd checks it before use.
func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard let text = String(validating: UnsafeBufferPointer(start: data, count: size), as: UTF8.self) else {
        return 0
    }
    if let config = try? ClusterConfig.parse(text, file: "/etc/dlm/fuzz.toml") {
        try? config.validate(file: "/etc/dlm/fuzz.toml")
    }
    _ = try? DaemonSettings.parse(text, file: "/etc/dlm/fuzz.toml")
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt { fuzzOne(data, size) }

@_cdecl("FuzzConfig_main")
public func fuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runLibFuzzer(argc, argv) { data, size in fuzzOne(data, size) }
}
