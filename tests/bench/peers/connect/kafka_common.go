package main

import (
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
)

// seedBrokers splits each entry on commas, as kafka_franz's seed_brokers does, so that
// `seed_brokers: [ "${KAFKA_BROKERS}" ]` takes a comma-separated list.
func seedBrokers(list []string) []string {
	var out []string
	for _, entry := range list {
		for _, b := range strings.Split(entry, ",") {
			if b = strings.TrimSpace(b); b != "" {
				out = append(out, b)
			}
		}
	}
	return out
}

func compressionCodec(name string) kgo.CompressionCodec {
	switch name {
	case "gzip":
		return kgo.GzipCompression()
	case "snappy":
		return kgo.SnappyCompression()
	case "zstd":
		return kgo.ZstdCompression()
	case "none":
		return kgo.NoCompression()
	default:
		return kgo.Lz4Compression()
	}
}
