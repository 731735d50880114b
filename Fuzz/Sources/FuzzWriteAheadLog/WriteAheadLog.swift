import FuzzSupport

@testable import DLMStore

/// The write-ahead log's recovery at start (`WriteAheadLog.pending`) over damaged files. The input's first byte
/// is the applied mark; the second picks the file:
/// - even: the rest is the file, as found on disk;
/// - odd: the rest, cut at each 0xFF, is the payloads of well-formed records of one epoch, after a file header and
///   before an end mark, as dlmd writes them; the second byte's upper bits, if not zero, pick a byte to damage.
/// Recovery must return records or throw, never trap; an undamaged log comes back whole when its payloads
/// decode.
func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = UnsafeBufferPointer(start: data, count: size)
    guard input.count >= 2 else { return 0 }
    let applied = UInt64(input[0])
    let rest = Array(input.dropFirst(2))
    guard input[1] & 1 == 1 else {
        _ = try? WriteAheadLog.pending(bytes: rest, path: "wal", applied: applied)
        return 0
    }
    let epoch: UInt64 = 0x0123_4567_89AB_CDEF
    let payloads = rest.split(separator: 0xFF, omittingEmptySubsequences: false).map(Array.init)
    var file = WriteAheadLog.fileHeader(epoch: epoch)
    for (index, payload) in payloads.enumerated() {
        file += WriteAheadLog.encodeRecord(sequence: applied + 1 + UInt64(index), payload: payload, epoch: epoch)
    }
    file += WriteAheadLog.encodeRecord(
        sequence: applied + 1 + UInt64(payloads.count), payload: [], epoch: epoch, magic: WriteAheadLog.endMagic)
    let damage = Int(input[1] >> 1)
    if damage != 0 { file[(damage * 131) % file.count] ^= 0x5A }
    guard let pending = try? WriteAheadLog.pending(bytes: file, path: "wal", applied: applied), damage == 0 else {
        return 0
    }
    precondition(pending.records.count == payloads.count, "an undamaged log came back with a record missing")
    for (record, payload) in zip(pending.records, payloads) {
        let operations = try? WriteAheadLog.decodePayload(payload, sequence: record.sequence)
        precondition(record.operations == operations, "record \(record.sequence) came back changed")
    }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt { fuzzOne(data, size) }

@_cdecl("FuzzWriteAheadLog_main")
public func fuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runLibFuzzer(argc, argv) { data, size in fuzzOne(data, size) }
}
