/// An array kept in chunks of 4,096 elements. A Swift array grows by doubling, which moves every element in one
/// step: the process copies of a node whose clients hold half a million locks of other masters are tens of
/// megabytes, and moving them was one of the steps of 100 to 170 ms seen while a bench took a million locks. A
/// chunked array grows a chunk at a time; an element is found through its chunk. (A position out of range traps in
/// the chunks' own bounds checks: past the last element, the last chunk is as long as what was appended to it.)
struct ChunkedArray<Element>: RandomAccessCollection, MutableCollection {
    static var chunkShift: Int { 12 }
    static var chunkMask: Int { (1 << chunkShift) - 1 }
    private var chunks: [[Element]] = []
    private(set) var count = 0

    var startIndex: Int { 0 }
    var endIndex: Int { count }

    subscript(position: Int) -> Element {
        // (Borrowed, not copied: a field read through a getter copied the whole element, retaining its parts.)
        _read { yield chunks[position >> Self.chunkShift][position & Self.chunkMask] }
        _modify { yield &chunks[position >> Self.chunkShift][position & Self.chunkMask] }
    }

    mutating func append(_ element: Element) {
        if count & Self.chunkMask == 0 {
            var chunk: [Element] = []
            chunk.reserveCapacity(Self.chunkMask + 1)
            chunks.append(chunk)
        }
        chunks[chunks.count - 1].append(element)
        count += 1
    }
}

extension ChunkedArray: Sendable where Element: Sendable {}
