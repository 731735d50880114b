import Testing

@testable import DLMCluster

/// The process copies' storage (ChunkedArray.swift): an array that grows a chunk at a time keeps every element in
/// its place across chunk boundaries, and changes one in place.
@Suite struct ChunkedArrayTests {
    @Test func elementsKeepTheirPlacesAcrossChunks() {
        var array = ChunkedArray<[Int]>()
        let count = 3 * 4_096 + 5
        for index in 0..<count { array.append([index]) }
        #expect(array.count == count)
        #expect(array.indices == 0..<count)
        #expect(array.enumerated().allSatisfy { $0.element == [$0.offset] })
        // Changed in place, at the last and first places of a chunk and in the last, partial one.
        for index in [4_095, 4_096, count - 1] { array[index].append(-1) }
        #expect(array[4_095] == [4_095, -1] && array[4_096] == [4_096, -1] && array[count - 1] == [count - 1, -1])
        #expect(array[4_094] == [4_094])
        #expect(array.filter { $0.count == 2 }.count == 3)
    }
}
