/// The legality checks of libdlm's flags (REFERENCE.md §3, Linux `set_lock_args` / `validate_lock_args`).
extension LockEngine {
    static func validate(_ request: LockRequest) throws(DLMError) {
        let flags = request.flags
        guard !request.name.isEmpty, request.name.count <= EngineConfig.maxNameLength else {
            throw .invalid("a resource name has 1 to 64 bytes, this one has \(request.name.count)")
        }
        guard flags.isSubset(of: LockFlags.requestFlags) else {
            throw .invalid("a lock request cannot carry \(flags.subtracting(LockFlags.requestFlags))")
        }
        guard !flags.contains(.convert) else { throw .invalid("CONVERT names an existing lock: use convert") }
        guard !flags.contains(.queueConversion) else { throw .invalid("QUECVT needs CONVERT") }
        guard !flags.contains(.conversionDeadlockDemote) else { throw .invalid("CONVDEADLK needs CONVERT") }
        if flags.contains(.expedite) {
            guard !flags.contains(.noQueue) else { throw .invalid("EXPEDITE excludes NOQUEUE") }
            guard request.mode == .nl else { throw .invalid("EXPEDITE is for NL requests only") }
        }
        if flags.contains(.orphan) {
            guard request.parent == nil else { throw .invalid("ORPHAN adopts top-level locks only") }
        }
        try validateTimeout(flags, request.timeout)
    }

    static func validate(_ request: ConvertRequest) throws(DLMError) {
        let flags = request.flags
        guard flags.isSubset(of: LockFlags.requestFlags) else {
            throw .invalid("a conversion cannot carry \(flags.subtracting(LockFlags.requestFlags))")
        }
        guard flags.contains(.convert) else { throw .invalid("a conversion carries CONVERT") }
        guard !flags.contains(.expedite) else { throw .invalid("EXPEDITE excludes CONVERT") }
        guard !flags.contains(.orphan) else { throw .invalid("ORPHAN adopts with a new request, not a conversion") }
        if flags.contains(.conversionDeadlockDemote) {
            guard !flags.contains(.noQueue) else { throw .invalid("CONVDEADLK excludes NOQUEUE") }
        }
        try validateTimeout(flags, request.timeout)
    }

    static func validateTimeout(_ flags: LockFlags, _ timeout: UInt64?) throws(DLMError) {
        if flags.contains(.timeout) {
            guard let timeout, timeout > 0 else { throw .invalid("TIMEOUT needs a timeout above zero") }
        } else if timeout != nil {
            throw .invalid("a timeout needs the TIMEOUT flag")
        }
    }

    /// A value to write must fit the lockspace's value block.
    func checkValueBlock(_ value: [UInt8]?, resource: Int32, required: Bool) throws(DLMError) {
        let length = lockspaces[Int(resources[Int(resource)].lockspace)].valueBlockLength
        guard let value else {
            if required { throw .invalid("VALBLK from PW or EX writes the value block: give the value") }
            return
        }
        guard value.count <= length else {
            throw .invalid("the value block of this lockspace has \(length) bytes, not \(value.count)")
        }
    }
}
