/// The two ends of an intrusive queue of lock slots.
struct QueueEnds {
    var head: Int32 = none
    var tail: Int32 = none
    @inlinable var isEmpty: Bool { head == none }
}

/// How many locks hold each mode (on the grant and convert queues), so that "does this mode conflict with
/// a granted lock" costs one mask test instead of a walk of the queues.
struct GrantedModes {
    private var counts: (UInt32, UInt32, UInt32, UInt32, UInt32, UInt32) = (0, 0, 0, 0, 0, 0)
    /// Bit m set when some lock holds mode m.
    private(set) var present: UInt8 = 0

    subscript(mode: UInt8) -> UInt32 {
        switch mode {
        case 0: counts.0
        case 1: counts.1
        case 2: counts.2
        case 3: counts.3
        case 4: counts.4
        default: counts.5
        }
    }

    mutating func add(_ mode: UInt8) {
        switch mode {
        case 0: counts.0 += 1
        case 1: counts.1 += 1
        case 2: counts.2 += 1
        case 3: counts.3 += 1
        case 4: counts.4 += 1
        default: counts.5 += 1
        }
        present |= 1 << mode
    }

    mutating func remove(_ mode: UInt8) {
        let left: UInt32
        switch mode {
        case 0:
            counts.0 -= 1
            left = counts.0
        case 1:
            counts.1 -= 1
            left = counts.1
        case 2:
            counts.2 -= 1
            left = counts.2
        case 3:
            counts.3 -= 1
            left = counts.3
        case 4:
            counts.4 -= 1
            left = counts.4
        default:
            counts.5 -= 1
            left = counts.5
        }
        if left == 0 { present &= ~(1 << mode) }
    }

    /// Whether `requested` conflicts with a granted mode, not counting one lock holding `excluding`.
    func conflict(with requested: UInt8, excluding own: UInt8) -> Bool {
        var holders = present & ModeTable.incompatible[Int(requested)]
        if own != noMode, holders & (1 << own) != 0, self[own] == 1 { holders &= ~(1 << own) }
        return holders != 0
    }
}

/// Mode relations as bit masks (bit m = mode m).
enum ModeTable {
    /// Modes incompatible with mode m (REFERENCE.md §1).
    static let incompatible: [UInt8] = [0b00_0000, 0b10_0000, 0b11_1000, 0b11_0100, 0b11_1100, 0b11_1110]

    @inlinable static func compatible(_ a: UInt8, _ b: UInt8) -> Bool { incompatible[Int(a)] & (1 << b) == 0 }

    /// Whether mode `a` blocks everything mode `b` blocks: the strength order NL < CR < CW, PR < PW < EX,
    /// in which CW and PR are not comparable.
    @inlinable static func dominates(_ a: UInt8, _ b: UInt8) -> Bool {
        incompatible[Int(b)] & ~incompatible[Int(a)] == 0
    }
}

/// One resource: a name in a lockspace (and in its parent resource's namespace), its three queues, its
/// lock value block and its fencing-token counter.
struct ResourceRecord {
    // The fields are in this order so that the record has no padding to speak of: 120 bytes, and a name of up
    // to 24 bytes inside them (bench/RESULTS.md counts the bytes a held lock costs).
    var lockspace: UInt32
    /// The parent resource's slot for a resource of sub-locks, `none` at the top level.
    var parent: Int32
    var grantQueue = QueueEnds()
    var convertQueue = QueueEnds()
    var waitQueue = QueueEnds()
    /// The name, inline when short (`ResourceIndex.swift`).
    var storedName: ResourceName
    var valueBlockInvalid = false
    /// `ResourceMark` bits: the resource holds persistent state, it changed since the last drain of the journal
    /// (Journal.swift), it is on a bulk job's list (BulkWork.swift).
    var marks: UInt8 = 0
    var granted = GrantedModes()
    var lockCount: Int32 = 0
    /// Resources in this resource's namespace.
    var childResources: Int32 = 0
    /// The value block; nil while it is all zeros.
    var valueBlock: [UInt8]? = nil
    var valueBlockSequence: UInt64 = 0
    /// The last fencing token issued for this resource.
    var fencingToken: UInt64 = 0

    var name: [UInt8] {
        get { storedName.bytes }
        set { storedName = ResourceName(newValue) }
    }

    init(lockspace: UInt32, parent: Int32, name: [UInt8], fencingToken: UInt64) {
        self.init(lockspace: lockspace, parent: parent, name: ResourceName(name), fencingToken: fencingToken)
    }

    init(lockspace: UInt32, parent: Int32, name: ResourceName, fencingToken: UInt64) {
        self.lockspace = lockspace
        self.parent = parent
        self.storedName = name
        self.fencingToken = fencingToken
    }

    @inlinable var isFree: Bool { lockspace == UInt32.max }
}

/// How a resource is found: its lockspace, its parent resource and its name.
struct ResourceKey: Hashable {
    var lockspace: UInt32
    var parent: Int32
    var name: [UInt8]
}
