import Foundation
import GroupServices
import Testing

/// The stored state of group services (dlmd keeps it as JSON in its store, meta `view`).
@Suite struct PersistentStateTests {
    @Test func fencedLivesRoundTripAndOlderRecordsHaveNone() throws {
        let state = PersistentState(highestViewNumber: 9, fenceCandidates: [1, 2], fencedIncarnations: [3: 4])
        let decoded = try JSONDecoder().decode(PersistentState.self, from: JSONEncoder().encode(state))
        #expect(decoded == state)
        #expect(decoded.fencedIncarnations[3] == 4)
        // A record written before fenced lives were kept.
        let older = try JSONDecoder().decode(
            PersistentState.self, from: Data(#"{"highestViewNumber":3,"fenceCandidates":[1,2]}"#.utf8))
        #expect(older == PersistentState(highestViewNumber: 3, fenceCandidates: [1, 2]))
    }
}
