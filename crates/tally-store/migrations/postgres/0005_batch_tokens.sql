-- One outcome per request (issue 21): each batch writes a random token in its transaction. When
-- the connection is lost after COMMIT was sent, the host checks the token on a new connection:
-- present, the batch committed (its clients are answered with their counts); absent once the old
-- session is gone, it did not. Tokens older than a day are deleted by the host that wrote them.
CREATE TABLE batch_tokens (
    token uuid PRIMARY KEY,
    host text NOT NULL,
    at bigint NOT NULL
);
CREATE INDEX batch_tokens_host_at ON batch_tokens (host, at);
