import DLMCore

/// A table by lock id kept in pages of consecutive ids, each an array: the locks that a recovery rebuilds on a
/// node get consecutive ids mostly (the engine hands out new slots in order), so their entries fill pages in
/// order, with no hashing and no jump to a random bucket of a table of a million entries. A page goes when its
/// last entry does; a table of few ids spread wide costs a page each.
struct PagedLockTable<Value> {
    static var pageBits: Int { 10 }
    static var pageSize: Int { 1 << pageBits }

    /// By page number (the lock's slot shifted right by `pageBits`): the page's entries (nil: none in it), and how
    /// many it holds.
    private var pages: [[Value?]?] = []
    private var pageCounts: [Int] = []
    /// How many entries the table holds.
    private(set) var count = 0

    var isEmpty: Bool { count == 0 }
    /// How many pages hold entries.
    var pageCount: Int { pageCounts.lazy.filter { $0 > 0 }.count }

    private static func place(of lock: LockID) -> (page: Int, index: Int)? {
        // (A lock id is its engine slot plus one.)
        guard lock.rawValue > 0 else { return nil }
        let slot = Int(lock.rawValue) - 1
        return (slot >> pageBits, slot & (pageSize - 1))
    }

    subscript(lock: LockID) -> Value? {
        get {
            guard let (page, index) = Self.place(of: lock), page < pages.count else { return nil }
            return pages[page]?[index] ?? nil
        }
        set { updateValue(newValue, forKey: lock) }
    }

    /// Sets or (with nil) removes the entry of `lock`; returns the entry it replaced.
    @discardableResult
    mutating func updateValue(_ value: Value?, forKey lock: LockID) -> Value? {
        guard let (page, index) = Self.place(of: lock) else { return nil }
        if page >= pages.count {
            guard value != nil else { return nil }
            pages.append(contentsOf: repeatElement(nil, count: page + 1 - pages.count))
            pageCounts.append(contentsOf: repeatElement(0, count: page + 1 - pageCounts.count))
        }
        if pages[page] == nil {
            guard value != nil else { return nil }
            pages[page] = Array(repeating: nil, count: Self.pageSize)
        }
        let old = pages[page]![index]
        pages[page]![index] = value
        let change = (value == nil ? 0 : 1) - (old == nil ? 0 : 1)
        pageCounts[page] += change
        count += change
        if pageCounts[page] == 0 { pages[page] = nil }
        return old
    }

    @discardableResult
    mutating func removeValue(forKey lock: LockID) -> Value? { updateValue(nil, forKey: lock) }
}

extension PagedLockTable: Sendable where Value: Sendable {}
