import FoundationEssentials
import GRDB
import ToolstackAPI

/// ternd's database: VM definitions, their states and processes, and the event log, in SQLite through GRDB.
///
/// WAL mode with `synchronous = FULL`: every write is one transaction whose commit reaches the disk before the call
/// returns, so a change the API acknowledged survives a kill -9 of ternd or a power cut. The schema grows through
/// numbered migrations that run when the store opens.
public final class Store: Sendable {
    private let database: DatabasePool

    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    public init(path: String) throws(ToolstackError) {
        var configuration = Configuration()
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = FULL")
        }
        do {
            database = try DatabasePool(path: path, configuration: configuration)
            try Self.migrator.migrate(database)
        } catch {
            throw .failure(message: "\(path): cannot open the database: \(error); check the --state-dir permissions")
        }
    }

    /// The schema's versions, oldest first. Never edit a registered migration; add the next one.
    private static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1: vms and events") { db in
            try db.execute(sql: """
                CREATE TABLE vm (
                    name TEXT PRIMARY KEY NOT NULL,
                    config TEXT NOT NULL,
                    cpu_policy TEXT NOT NULL,
                    autostart BOOLEAN NOT NULL,
                    state TEXT NOT NULL,
                    exit_status INTEGER,
                    pid INTEGER,
                    pid_start_time INTEGER,
                    created_at DOUBLE NOT NULL
                );
                CREATE TABLE event (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    time DOUBLE NOT NULL,
                    vm TEXT NOT NULL,
                    kind TEXT NOT NULL,
                    state TEXT,
                    exit_status INTEGER,
                    message TEXT NOT NULL
                );
                """)
        }
        return migrator
    }

    /// Adds a VM in state `defined` with its `created` event, both or neither.
    public func create(_ record: VMRecord) throws(ToolstackError) -> VMEvent {
        try write { db in
            if try Row.fetchOne(db, sql: "SELECT 1 FROM vm WHERE name = ?", arguments: [record.name]) != nil {
                throw ToolstackError.conflict(message: "a VM named '\(record.name)' exists; choose another name or delete it first")
            }
            try db.execute(
                sql: """
                    INSERT INTO vm (name, config, cpu_policy, autostart, state, exit_status, pid, pid_start_time, created_at)
                    VALUES (?, ?, ?, ?, ?, NULL, NULL, NULL, ?)
                    """,
                arguments: [record.name, record.config, record.cpuPolicy.rawValue, record.autostart, VMState.defined.rawValue,
                            Date().timeIntervalSince1970])
            return try Self.appendEvent(db, vm: record.name, kind: "created", state: .defined, exitStatus: nil,
                                        message: "defined")
        }
    }

    /// Removes a VM that has no process, with its `deleted` event.
    public func delete(name: String) throws(ToolstackError) -> VMEvent {
        try write { db in
            guard let record = try Self.fetch(db, name: name) else { throw ToolstackError.notFound(name: name) }
            guard !record.state.hasProcess else {
                throw ToolstackError.conflict(message: "VM '\(name)' is \(record.state.rawValue); stop it before deleting it")
            }
            try db.execute(sql: "DELETE FROM vm WHERE name = ?", arguments: [name])
            return try Self.appendEvent(db, vm: name, kind: "deleted", state: nil, exitStatus: nil, message: "deleted")
        }
    }

    /// Records a state change and its event in one transaction. `expecting`, when given, must hold the VM's
    /// current state, so that a change decided on an older reading is refused rather than applied.
    public func transition(_ name: String, _ change: Transition, expecting: Set<VMState>? = nil) throws(ToolstackError) -> VMEvent {
        try write { db in
            guard let record = try Self.fetch(db, name: name) else { throw ToolstackError.notFound(name: name) }
            if let expecting, !expecting.contains(record.state) {
                throw ToolstackError.conflict(message: "VM '\(name)' is \(record.state.rawValue)")
            }
            try db.execute(
                sql: "UPDATE vm SET state = ?, exit_status = ?, pid = ?, pid_start_time = ? WHERE name = ?",
                arguments: [change.state.rawValue, change.exitStatus, change.process?.pid,
                            change.process.map { Int64(bitPattern: $0.startTime) }, name])
            return try Self.appendEvent(db, vm: name, kind: "state", state: change.state, exitStatus: change.exitStatus,
                                        message: change.message)
        }
    }

    /// The VM named `name`, nil when there is none.
    public func vm(named name: String) throws(ToolstackError) -> VMRecord? {
        try read { db in try Self.fetch(db, name: name) }
    }

    /// Every VM, by name.
    public func vms() throws(ToolstackError) -> [VMRecord] {
        try read { db in try Row.fetchAll(db, sql: "SELECT * FROM vm ORDER BY name").map(Self.record) }
    }

    /// Events after the one numbered `id`, oldest first, at most `limit`.
    public func events(after id: Int64, limit: Int = 1000) throws(ToolstackError) -> [VMEvent] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM event WHERE id > ? ORDER BY id LIMIT ?", arguments: [id, limit]).map(Self.event)
        }
    }

    private func write<T>(_ body: (Database) throws -> T) throws(ToolstackError) -> T {
        do {
            return try database.write(body)
        } catch let error as ToolstackError {
            throw error
        } catch {
            throw .failure(message: "database write failed: \(error)")
        }
    }

    private func read<T>(_ body: (Database) throws -> T) throws(ToolstackError) -> T {
        do {
            return try database.read(body)
        } catch {
            throw .failure(message: "database read failed: \(error)")
        }
    }

    private static func fetch(_ db: Database, name: String) throws -> VMRecord? {
        try Row.fetchOne(db, sql: "SELECT * FROM vm WHERE name = ?", arguments: [name]).map(record)
    }

    private static func record(_ row: Row) -> VMRecord {
        let pid: Int32? = row["pid"]
        let startTime: Int64? = row["pid_start_time"]
        let process = pid.flatMap { pid in startTime.map { ProcessIdentity(pid: pid, startTime: UInt64(bitPattern: $0)) } }
        return VMRecord(name: row["name"], config: row["config"],
                        cpuPolicy: CPUPolicy(rawValue: row["cpu_policy"]) ?? .shared, autostart: row["autostart"],
                        state: VMState(rawValue: row["state"]) ?? .crashed, exitStatus: row["exit_status"], process: process)
    }

    private static func event(_ row: Row) -> VMEvent {
        let state: String? = row["state"]
        return VMEvent(id: row["id"], time: row["time"], vm: row["vm"], kind: row["kind"], state: state.flatMap(VMState.init),
                       exitStatus: row["exit_status"], message: row["message"])
    }

    private static func appendEvent(_ db: Database, vm: String, kind: String, state: VMState?, exitStatus: Int?,
                                    message: String) throws -> VMEvent {
        let time = Date().timeIntervalSince1970
        try db.execute(sql: "INSERT INTO event (time, vm, kind, state, exit_status, message) VALUES (?, ?, ?, ?, ?, ?)",
                       arguments: [time, vm, kind, state?.rawValue, exitStatus, message])
        return VMEvent(id: db.lastInsertedRowID, time: time, vm: vm, kind: kind, state: state, exitStatus: exitStatus, message: message)
    }
}
