// Command s3server serves an S3-compatible API (gofakes3) over a bbolt file, so objects survive a restart.
// It exists for medstream's tests and local stack: the blob store's S3 code is exercised against a real
// HTTP S3 server without MinIO or a cloud account.
//
//	s3server -addr 127.0.0.1:18200 -data /tmp/s3 -bucket medstream-blobs
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3bolt"
	bolt "go.etcd.io/bbolt"
)

func main() {
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	addr := flag.String("addr", "127.0.0.1:9000", "host:port to listen on")
	data := flag.String("data", "", "folder for the bbolt database (s3.db); created if missing")
	buckets := flag.String("bucket", "", "comma-separated buckets to create at start when missing")
	flag.Parse()
	if *data == "" {
		return errors.New("-data is required")
	}
	if err := os.MkdirAll(*data, 0o700); err != nil {
		return err
	}
	// bbolt fsyncs every committed transaction; the timeout turns a second server on the same folder into an error.
	db, err := bolt.Open(filepath.Join(*data, "s3.db"), 0o600, &bolt.Options{Timeout: 10 * time.Second})
	if err != nil {
		return fmt.Errorf("open %s: %w", *data, err)
	}
	defer db.Close()
	backend := s3bolt.New(db)
	for _, name := range strings.Split(*buckets, ",") {
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		if err := backend.CreateBucket(name); err != nil && !gofakes3.IsAlreadyExists(err) {
			return fmt.Errorf("create bucket %q: %w", name, err)
		}
	}
	faker := gofakes3.New(backend, gofakes3.WithLogger(gofakes3.DiscardLog()))
	listener, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	server := &http.Server{Handler: faker.Server(), ReadHeaderTimeout: 30 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = server.Shutdown(shutdown)
	}()
	log.Printf("s3server listening on %s, data in %s", listener.Addr(), *data)
	if err := server.Serve(listener); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
