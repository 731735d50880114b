extension LockEngine {
    /// The lowest fencing token a resource of the lockspace created now would start above: the highest
    /// token any resource of it has issued, live or freed. A node persists it so that tokens issued after a
    /// restart are strictly greater than any issued before.
    public func fencingTokenHighWater(_ lockspace: LockspaceID) -> UInt64? {
        guard let ls = liveSlot(lockspace) else { return nil }
        var highest = lockspaces[Int(ls)].fencingTokenFloor
        for resource in resources where resource.lockspace == ls && resource.fencingToken > highest {
            highest = resource.fencingToken
        }
        return highest
    }

    /// The fencing-token floor kept for the name of a released lockspace (0: none): at least every token it issued.
    public func fencingTokenFloor(ofReleased name: [UInt8]) -> UInt64 { releasedLockspaceFloors[name] ?? 0 }

    /// The names of every lockspace this engine keeps a fencing-token floor for: live, draining or released.
    public var namesWithFencingTokenFloors: Set<[UInt8]> {
        Set(lockspaceIndex.keys).union(releasedLockspaceFloors.keys)
    }

    /// The fencing-token floor of the lockspace of this name, live or released (0: none): at least every token a
    /// resource of a lockspace of that name issued and freed here.
    public func fencingTokenFloor(named name: [UInt8]) -> UInt64 {
        let live = lockspace(named: name).flatMap { fencingTokenFloor($0) } ?? 0
        return max(live, fencingTokenFloor(ofReleased: name))
    }

    /// The lockspace's fencing-token floor: at least the last token of every resource of it that was freed.
    public func fencingTokenFloor(_ lockspace: LockspaceID) -> UInt64? {
        guard let ls = liveSlot(lockspace) else { return nil }
        return lockspaces[Int(ls)].fencingTokenFloor
    }

    /// Raises the lockspace's fencing-token floor (never lowers it); resources created later start above it.
    public mutating func raiseFencingTokenFloor(_ lockspace: LockspaceID, to floor: UInt64) {
        guard let ls = liveSlot(lockspace) else { return }
        if floor > lockspaces[Int(ls)].fencingTokenFloor {
            lockspaces[Int(ls)].fencingTokenFloor = floor
        }
    }
}
