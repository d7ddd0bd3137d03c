// Package fencing is the store side of the fencing example (docs/fencing.md): a
// PostgreSQL table that remembers, per lock, the highest fencing token that has written,
// and a write that passes only with a token at least that high, in the same transaction
// as the data it writes.
//
// What it guarantees: once a write with token N has committed, no write with a token
// below N commits, whatever the writer believes about its lock (a paused process, an
// expired Lease, a lost event it never read). Writes pass the fence one at a time (the
// fence row's lock), so the ids of the writes table are in the order they passed it.
// What it does NOT guarantee: that a token is new. A Lease deleted by hand restarts its
// tokens at 1 for an agent that never saw it (README, "Not guaranteed"); the fence then
// refuses every write until the row is reset, which is the safe way to fail.
package fencing

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Schema creates the tables (idempotent).
//
//go:embed schema.sql
var Schema string

// schemaLock is the advisory lock under which replicas starting together apply Schema
// (CREATE TABLE IF NOT EXISTS is not safe to run concurrently).
const schemaLock = 7238

// FenceSQL moves the fence to token, or leaves it where it is and updates no row when a
// higher token has already written. It takes the fence row's lock until the transaction
// ends, so two writers pass one after the other.
const FenceSQL = `UPDATE fence SET token = $2 WHERE name = $1 AND token <= $2`

// insertSQL is the data write of the example, done only after FenceSQL updated the row.
const insertSQL = `INSERT INTO writes (lock, token, writer, seq, started) VALUES ($1, $2, $3, $4, $5) RETURNING id`

// Store is the fenced table of one lock.
type Store struct {
	pool *pgxpool.Pool
	lock string
}

// Open connects to dsn, applies Schema and makes the lock's fence row (token 0).
func Open(ctx context.Context, dsn, lock string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's message names the part of the DSN it could not read.
		return nil, fmt.Errorf("database URL: %w (want postgres://user:password@host:port/db)", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s:%d: %w", cfg.ConnConfig.Host, cfg.ConnConfig.Port, err)
	}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, schemaLock); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, Schema); err != nil {
			return fmt.Errorf("apply schema: %w", err)
		}
		_, err := tx.Exec(ctx, `INSERT INTO fence (name, token) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING`, lock)
		return err
	})
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("set up the fence of %q at %s:%d: %w", lock, cfg.ConnConfig.Host, cfg.ConnConfig.Port, err)
	}
	return &Store{pool: pool, lock: lock}, nil
}

// Close closes the connections.
func (s *Store) Close() { s.pool.Close() }

// Write is one unit of work that holder writer did with token, begun at started.
type Write struct {
	Token   int64
	Writer  string
	Seq     int64
	Started time.Time
}

// ErrRefused is the fence's answer to a write whose token is below one that has written.
var ErrRefused = errors.New("refused by the fence: a higher fencing token has written")

// RefusedError says which token the fence held when it refused.
type RefusedError struct {
	Token, FenceToken int64
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("token %d refused by the fence: token %d has written", e.Token, e.FenceToken)
}

func (e *RefusedError) Unwrap() error { return ErrRefused }

// Write passes the fence with w.Token and writes the row in the same transaction, or
// writes nothing and returns a *RefusedError (errors.Is ErrRefused) and records the
// refusal in the refusals table.
func (s *Store) Write(ctx context.Context, w Write) (id int64, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, FenceSQL, s.lock, w.Token)
		if err != nil {
			return fmt.Errorf("fence: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return ErrRefused
		}
		return tx.QueryRow(ctx, insertSQL, s.lock, w.Token, w.Writer, w.Seq, w.Started).Scan(&id)
	})
	if !errors.Is(err, ErrRefused) {
		return id, err
	}
	// The transaction is rolled back; say what it was refused for, outside it.
	refused := &RefusedError{Token: w.Token}
	if err := s.pool.QueryRow(ctx, `INSERT INTO refusals (lock, token, writer, seq, started, fence_token)
		SELECT $1, $2, $3, $4, $5, token FROM fence WHERE name = $1 RETURNING fence_token`,
		s.lock, w.Token, w.Writer, w.Seq, w.Started).Scan(&refused.FenceToken); err != nil {
		return 0, fmt.Errorf("%w (and recording the refusal failed: %v)", refused, err)
	}
	return 0, refused
}
