package nft

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Counter is a named counter of a table, as a dump shows it.
type Counter struct {
	Name           string
	Packets, Bytes uint64
}

// Counters dumps the named counters of table t; none when t does not
// exist.
func (c *Conn) Counters(t *nftables.Table) ([]Counter, error) {
	var out []Counter
	attrs := []netlink.Attribute{
		{Type: unix.NFTA_OBJ_TABLE, Data: cstring(t.Name)},
		{Type: unix.NFTA_OBJ_TYPE, Data: be32(unix.NFT_OBJECT_COUNTER)},
	}
	err := c.read(func(tx *Tx) error {
		return tx.c.dumpRetried(t.Family, unix.NFT_MSG_GETOBJ, attrs, func() { out = out[:0] }, func(typ uint16, data []byte) error {
			if typ != unix.NFT_MSG_NEWOBJ {
				return nil
			}
			var ctr Counter
			var table string
			var objType uint32
			err := walkAttrs(data[4:], func(typ uint16, v []byte) {
				switch typ {
				case unix.NFTA_OBJ_TABLE:
					table = cstringOf(v)
				case unix.NFTA_OBJ_NAME:
					ctr.Name = cstringOf(v)
				case unix.NFTA_OBJ_TYPE:
					if len(v) == 4 {
						objType = binary.BigEndian.Uint32(v)
					}
				case unix.NFTA_OBJ_DATA:
					_ = walkAttrs(v, func(typ uint16, v []byte) {
						if len(v) != 8 {
							return
						}
						switch typ {
						case unix.NFTA_COUNTER_PACKETS:
							ctr.Packets = binary.BigEndian.Uint64(v)
						case unix.NFTA_COUNTER_BYTES:
							ctr.Bytes = binary.BigEndian.Uint64(v)
						}
					})
				}
			})
			// Older kernels filter object dumps by neither table nor type.
			if table == t.Name && objType == unix.NFT_OBJECT_COUNTER {
				out = append(out, ctr)
			}
			return err
		})
	})
	if err != nil && !errors.Is(err, errMissing) {
		return nil, fmt.Errorf("list counters of %s %s: %w", FamilyName(t.Family), t.Name, err)
	}
	return out, nil
}
