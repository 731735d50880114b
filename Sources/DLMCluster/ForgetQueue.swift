import DequeModule

/// What owners that went left behind, forgotten a slice at a time (an owner's process copies, `ProcessCopies`;
/// the locks recovery rebuilt for a holder, `RebuiltLocks`): a client of a million locks that goes is forgotten
/// between turns of the event loop, not in one step. Whether an owner is still being forgotten is known at once.
struct ForgetQueue<Owner: Hashable, Item> {
    private var queue: Deque<(owner: Owner, items: [Item])> = []
    private var owners: Set<Owner> = []

    var isEmpty: Bool { queue.isEmpty }

    func contains(_ owner: Owner) -> Bool { !owners.isEmpty && owners.contains(owner) }

    mutating func append(_ owner: Owner, _ items: [Item]) {
        queue.append((owner, items))
        owners.insert(owner)
    }

    /// The next `budget` items at most, each with its owner, in the order the owners went; an owner whose last
    /// item this hands out is no longer being forgotten.
    mutating func take(upTo budget: Int) -> [(owner: Owner, item: Item)] {
        var taken: [(owner: Owner, item: Item)] = []
        while taken.count < budget, var next = queue.popFirst() {
            while taken.count < budget, let item = next.items.popLast() { taken.append((next.owner, item)) }
            if next.items.isEmpty {
                owners.remove(next.owner)
            } else {
                queue.prepend(next)
            }
        }
        return taken
    }
}

extension ForgetQueue: Sendable where Owner: Sendable, Item: Sendable {}
