import Testing

@testable import DLMCore

/// One second in the engine's time unit (nanoseconds).
let second: Instant = 1_000_000_000

/// A lock engine with one lockspace ("ls", value blocks of 32 bytes), driven through labelled locks so that a
/// test reads like a transcript:
///
///     #expect(h.lock("a", by: 1, on: "r1", .ex) == ["a granted EX token=1"])
///     #expect(h.lock("b", by: 2, on: "r1", .pr) == ["a bast PR"])
///     #expect(h.unlock("a") == ["a EUNLOCK", "b granted PR"])
///
/// Every operation returns the effects it produced, in order, one line each (see `render`). A request the
/// engine refuses synchronously renders as a single line "error EINVAL" (and so on), after any effects.
struct Harness {
    var engine: LockEngine
    /// The lockspace used when a call names none.
    let ls: LockspaceID
    private(set) var ids: [String: LockID] = [:]
    private(set) var labels: [LockID: String] = [:]
    private(set) var owners: [String: OwnerID] = [:]
    private(set) var lockspaces: [String: LockspaceID] = [:]

    init(config: EngineConfig = EngineConfig(), valueBlockLength: Int = 32) {
        engine = LockEngine(config: config)
        ls = try! engine.createLockspace(name: Array("ls".utf8), valueBlockLength: valueBlockLength)
    }

    /// The id of the lock requested under `label`.
    /// The id of the lock requested under `label` (id 0, never a lock, and a test failure if there is none).
    func id(_ label: String, sourceLocation: SourceLocation = #_sourceLocation) -> LockID {
        guard let id = ids[label] else {
            Issue.record("no lock labelled \(label)", sourceLocation: sourceLocation)
            return LockID(rawValue: 0)
        }
        return id
    }

    func owner(_ label: String, sourceLocation: SourceLocation = #_sourceLocation) -> OwnerID {
        guard let owner = owners[label] else {
            Issue.record("no lock labelled \(label)", sourceLocation: sourceLocation)
            return OwnerID(0)
        }
        return owner
    }

    /// What the lock labelled `label` looks like now; nil once it is gone.
    func state(_ label: String) -> LockSnapshot? {
        guard let id = ids[label], labels[id] == label else { return nil }
        return engine.lockState(id)
    }

    // MARK: Operations

    /// A new request by `owner` for `mode` on `name`, remembered as `label`.
    mutating func lock(
        _ label: String, by owner: UInt64, on name: String, _ mode: LockMode, _ flags: LockFlags = [],
        parent: String? = nil, timeout: UInt64? = nil, transaction: UInt64? = nil, priority: UInt8 = 0,
        basts: Bool = true, alwaysFencingToken: Bool = false, in lockspace: LockspaceID? = nil
    ) -> [String] {
        request(
            label,
            LockRequest(
                lockspace: lockspace ?? ls, owner: OwnerID(owner), name: Array(name.utf8), mode: mode, flags: flags,
                parent: parent.map { id($0) }, timeout: timeout, transaction: transaction, priority: priority,
                wantsBlockingCallbacks: basts, alwaysFencingToken: alwaysFencingToken))
    }

    /// Any new request, remembered as `label`.
    mutating func request(_ label: String, _ request: LockRequest) -> [String] {
        var effects: [Effect] = []
        do throws(DLMError) {
            let id = try engine.lock(request, into: &effects)
            if let stale = ids[label], labels[stale] == label { labels[stale] = nil }
            if let previous = labels[id] { ids[previous] = nil }
            ids[label] = id
            labels[id] = label
            owners[label] = request.owner
            lockspaces[label] = request.lockspace
            return render(effects)
        } catch {
            return render(effects) + ["error \(error.status.name)"]
        }
    }

    /// A conversion of the lock labelled `label` by its owner (or by `owner`).
    mutating func convert(
        _ label: String, to mode: LockMode, _ flags: LockFlags = [], value: [UInt8]? = nil, timeout: UInt64? = nil,
        priority: UInt8? = nil, by owner: UInt64? = nil, base: UInt64? = nil
    ) -> [String] {
        convert(
            ConvertRequest(
                lock: id(label), owner: owner.map { OwnerID($0) } ?? self.owner(label), mode: mode, flags: flags,
                valueBlock: value, timeout: timeout, priority: priority, valueBlockBase: base))
    }

    mutating func convert(_ request: ConvertRequest) -> [String] {
        var effects: [Effect] = []
        do throws(DLMError) {
            try engine.convert(request, into: &effects)
            return render(effects)
        } catch {
            return render(effects) + ["error \(error.status.name)"]
        }
    }

    /// An unlock (or, with CANCEL, a cancel) of the lock labelled `label` by its owner (or by `owner`).
    mutating func unlock(
        _ label: String, _ flags: LockFlags = [], value: [UInt8]? = nil, by owner: UInt64? = nil,
        base: UInt64? = nil
    ) -> [String] {
        var effects: [Effect] = []
        do throws(DLMError) {
            try engine.unlock(
                UnlockRequest(
                    lock: id(label), owner: owner.map { OwnerID($0) } ?? self.owner(label), flags: flags,
                    valueBlock: value, valueBlockBase: base),
                into: &effects)
            return render(effects)
        } catch {
            return render(effects) + ["error \(error.status.name)"]
        }
    }

    mutating func cancel(_ label: String) -> [String] {
        unlock(label, .cancel)
    }

    mutating func exit(_ owner: UInt64) -> [String] {
        var effects: [Effect] = []
        engine.ownerExited(OwnerID(owner), into: &effects)
        return render(effects)
    }

    /// One slice of bulk work (an exit, a purge or a forced release larger than `EngineConfig.bulkSlice`).
    mutating func slice() -> [String] {
        var effects: [Effect] = []
        engine.continueBulkWork(into: &effects)
        return render(effects)
    }

    mutating func tick(_ now: Instant) -> [String] {
        var effects: [Effect] = []
        engine.tick(now: now, into: &effects)
        return render(effects)
    }

    /// Rule 4: what `grantPendingAfterRecovery` grants once recovery is done.
    mutating func grantPendingAfterRecovery() -> [String] {
        var effects: [Effect] = []
        engine.grantPendingAfterRecovery(ls, into: &effects)
        return render(effects)
    }

    /// A fresh engine (same configuration) holding what `other`'s lockspace holds, rebuilt from snapshots, with
    /// the same labels.
    init(restoring other: Harness) throws(DLMError) {
        self.init(config: other.engine.config, valueBlockLength: other.engine.lockspaceInfo(other.ls)!.valueBlockLength)
        for resource in other.engine.snapshotLockspace(other.ls) { try engine.restore(resource) }
        ids = other.ids
        labels = other.labels
        owners = other.owners
        lockspaces = other.lockspaces
    }

    /// Binds a label to a lock the engine already has (after `restore`, say).
    mutating func name(_ label: String, _ id: LockID, owner: OwnerID, lockspace: LockspaceID? = nil) {
        ids[label] = id
        labels[id] = label
        owners[label] = owner
        lockspaces[label] = lockspace ?? ls
    }

    // MARK: Rendering

    func render(_ effects: [Effect]) -> [String] {
        effects.map(render)
    }

    /// One effect as a transcript line:
    /// - completion: `<label> <granted|EAGAIN|EDEADLK|ETIMEDOUT|EUNLOCK|ECANCEL> [mode] [DEMOTED|VALNOTVALID|ALTMODE]
    ///   [lvb=<text>] [seq=N] [token=N]`, where the mode is the one held afterwards, the value block is shown as
    ///   text without its trailing zeros (`lvb=<>` for all zeros), and a zero sequence or token is left out;
    /// - blocking callback: `<label> bast <mode>`.
    /// An owner other than the label's is shown as ` owner=N`; a value block whose length is not the
    /// lockspace's as ` len=N`.
    func render(_ effect: Effect) -> String {
        switch effect {
        case .completion(let c):
            let label = labels[c.lock] ?? "#\(c.lock.rawValue)"
            var line = label + (c.status == .granted ? " granted" : " \(c.status.name)")
            if let mode = c.mode { line += " \(mode)" }
            if !c.flags.isEmpty { line += " \(c.flags)" }
            if let value = c.valueBlock {
                line += " lvb=<\(Harness.text(value))>"
                let expected = lockspaces[label].flatMap { engine.lockspaceInfo($0)?.valueBlockLength }
                if value.count != expected { line += " len=\(value.count)" }
            }
            if c.valueBlockSequence != 0 { line += " seq=\(c.valueBlockSequence)" }
            if c.fencingToken != 0 { line += " token=\(c.fencingToken)" }
            if c.owner != owners[label] { line += " owner=\(c.owner.rawValue)" }
            return line
        case .blockingCallback(let b):
            let label = labels[b.lock] ?? "#\(b.lock.rawValue)"
            var line = "\(label) bast \(b.mode)"
            if b.owner != owners[label] { line += " owner=\(b.owner.rawValue)" }
            return line
        case .finished(let f):
            return "finished \(f.count) owner=\(f.owner.rawValue)"
        case .refused(let error):
            return "error \(error.status.name)"
        case .accepted(let id):
            return "accepted #\(id.rawValue)"
        case .lockspace(let info, let created):
            return "lockspace \(info.name.displayName)" + (created ? " created" : "")
        case .persist:
            return "persist"
        case .replicate(let replica):
            return "replicate \(replica.name.displayName)" + (replica.removed ? " removed" : "")
        }
    }

    /// Bytes as text, trailing zeros dropped, bytes outside printable ASCII as \xNN.
    static func text(_ bytes: [UInt8]) -> String {
        var end = bytes.count
        while end > 0 && bytes[end - 1] == 0 { end -= 1 }
        return bytes[..<end].map { byte in
            (0x20..<0x7F).contains(byte) && byte != UInt8(ascii: ">")
                ? String(UnicodeScalar(byte)) : "\\x" + String(byte, radix: 16)
        }.joined()
    }
}

/// Bytes of an ASCII string, for value blocks.
func bytes(_ text: String) -> [UInt8] {
    Array(text.utf8)
}

/// A value block of the harness's 32 bytes holding `text`.
func valueBlock(_ text: String, length: Int = 32) -> [UInt8] {
    Array(text.utf8) + [UInt8](repeating: 0, count: length - text.utf8.count)
}
