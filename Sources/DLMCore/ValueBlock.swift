/// What a grant or conversion does to the resource's lock value block (REFERENCE.md §4).
enum ValueBlockOperation: Equatable {
    case read
    case write
    case nothing

    /// From `granted` (`noMode` for a new request) to `requested`: a new grant and a conversion to an equal
    /// or higher mode read; a conversion from PW or EX writes, except PW to EX which reads; PR <-> CW does
    /// nothing, and so does a conversion down from a mode below PW.
    init(from granted: UInt8, to requested: UInt8) {
        let pw = LockMode.pw.rawValue
        if granted == noMode {
            self = .read
        } else if granted == pw && requested == LockMode.ex.rawValue {
            self = .read
        } else if granted >= pw {
            self = .write
        } else if (granted == LockMode.pr.rawValue && requested == LockMode.cw.rawValue)
            || (granted == LockMode.cw.rawValue && requested == LockMode.pr.rawValue)
        {
            self = .nothing
        } else {
            self = requested >= granted ? .read : .nothing
        }
    }
}

extension LockEngine {
    /// Writes a value (padded with zeros to the lockspace's length): the sequence number goes up by one and
    /// the invalid mark is cleared.
    mutating func writeValueBlock(_ value: [UInt8], resource: Int32) {
        let length = lockspaces[Int(resources[Int(resource)].lockspace)].valueBlockLength
        var stored = value
        if stored.count < length { stored.append(contentsOf: repeatElement(0, count: length - stored.count)) }
        resources[Int(resource)].valueBlock = stored
        resources[Int(resource)].valueBlockSequence &+= 1
        resources[Int(resource)].valueBlockInvalid = false
        replicate(resource)
        touch(resource)
    }

    /// Whether the write (or IVVALBLK) of a conversion or unlock whose holder last saw its lock granted at value-block
    /// sequence `base` was done already: the resource's sequence is above `base`. While a lock is held in PW or EX
    /// nobody else writes, so only its own write, or that of a holder granted after its release, can have raised
    /// the sequence since. A holder node sends `base` with an operation on a remote master: an operation sent again
    /// to a new master after the old one died, which the old one had done, writes nothing a second time (over a
    /// later acknowledged write: random recovery seed 528210). Nil (a local client's operation): not done.
    func writeWasDone(base: UInt64?, resource: Int32) -> Bool {
        guard let base else { return false }
        return resources[Int(resource)].valueBlockSequence > base
    }

    /// The current value, all zeros until the first write.
    func readValueBlock(resource: Int32) -> [UInt8] {
        resources[Int(resource)].valueBlock
            ?? [UInt8](repeating: 0, count: lockspaces[Int(resources[Int(resource)].lockspace)].valueBlockLength)
    }
}
