// Command ferretdb runs FerretDB v1 (a MongoDB wire-protocol server) with its
// SQLite backend, for zen-gateway's tests, or with its PostgreSQL backend
// (--postgresql-url), for benchmarks closer to MongoDB. It embeds FerretDB's public
// package instead of building cmd/ferretdb, whose version file is not part of
// the published module (a plain `go install` builds a binary that panics).
package main

import (
	"context"
	"flag"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen-addr", "127.0.0.1:27017", "TCP address to listen on")
	dir := flag.String("sqlite-dir", "ferretdb-data", "directory of the SQLite databases")
	pg := flag.String("postgresql-url", "", "PostgreSQL URL: use the PostgreSQL backend instead of SQLite")
	flag.Parse()

	if *pg != "" {
		run(ferretdb.Config{
			Listener:      ferretdb.ListenerConfig{TCP: *listen},
			Handler:       "postgresql",
			PostgreSQLURL: *pg,
		}, "postgresql")
		return
	}

	if err := os.MkdirAll(*dir, 0o755); err != nil {
		log.Fatal(err)
	}
	run(ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: *listen},
		Handler:   "sqlite",
		SQLiteURL: "file:" + *dir + "/",
	}, "sqlite in "+*dir)
}

func run(config ferretdb.Config, backend string) {
	f, err := ferretdb.New(&config)
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log.Printf("ferretdb listening on %s (%s)", config.Listener.TCP, backend)
	if err := f.Run(ctx); err != nil && ctx.Err() == nil {
		log.Fatal(err)
	}
}
