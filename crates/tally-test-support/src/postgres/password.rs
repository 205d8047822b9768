//! Password authentication on a throwaway PostgreSQL (issue 21 part 6): a role that must log in
//! with SCRAM-SHA-256 over TCP, as on a stock Debian cluster, so a test can show what a wrong or
//! missing password looks like. The `postgres` superuser keeps trust, so the test's own `psql`
//! still works.

use super::PgServer;

impl PgServer {
    /// Creates role `user` with `password` (stored as a SCRAM verifier, the server default) owning a new database
    /// `db`, and makes the server ask that role for its password over TCP (`scram-sha-256`, the
    /// first matching line of `pg_hba.conf`). Returns the URL without the password:
    /// `postgres://USER@127.0.0.1:PORT/DB`.
    pub fn create_password_role(&self, user: &str, password: &str, db: &str) -> String {
        let plain = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        assert!(
            plain(user) && plain(db),
            "role and database: letters, digits, _"
        );
        assert!(!password.contains('\''), "no quote in the test password");
        self.psql(
            "postgres",
            &format!("CREATE ROLE \"{user}\" LOGIN PASSWORD '{password}'"),
        );
        self.psql(
            "postgres",
            &format!("CREATE DATABASE \"{db}\" OWNER \"{user}\""),
        );
        let hba = self.data().join("pg_hba.conf");
        let old =
            std::fs::read_to_string(&hba).unwrap_or_else(|e| panic!("read {}: {e}", hba.display()));
        let new = format!("host all {user} 0.0.0.0/0 scram-sha-256\n{old}");
        std::fs::write(&hba, new).unwrap_or_else(|e| panic!("write {}: {e}", hba.display()));
        self.psql("postgres", "SELECT pg_reload_conf()");
        format!("postgres://{user}@{}/{db}", self.addr())
    }
}
