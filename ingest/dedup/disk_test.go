package dedup

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// TestOpenDiskFailureLeavesNoDirectory: OpenDisk empties and creates its
// directory before Pebble opens the store; when Pebble refuses (here: a
// memtable past its 4 GiB limit, refused before anything is allocated),
// the directory goes too, as Close would remove it. The consumer makes a
// fresh temporary directory per run, so a leftover would pile up in
// --dedup-dir with every failed start.
func TestOpenDiskFailureLeavesNoDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	d, err := OpenDisk(DiskConfig{Dir: dir, MemtableBytes: 8 << 30})
	if err == nil {
		_ = d.Close()
		t.Fatal("OpenDisk with an 8 GiB memtable: no error")
	}
	if _, serr := os.Stat(dir); !errors.Is(serr, fs.ErrNotExist) {
		t.Fatalf("after %v: %s still there (stat: %v)", err, dir, serr)
	}

	// The same directory opens and closes cleanly afterwards.
	d, err = OpenDisk(DiskConfig{Dir: dir})
	if err != nil {
		t.Fatalf("OpenDisk: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, serr := os.Stat(dir); !errors.Is(serr, fs.ErrNotExist) {
		t.Fatalf("after Close: %s still there (stat: %v)", dir, serr)
	}
}
