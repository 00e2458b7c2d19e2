package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redpanda-data/benthos/v4/public/service"
	"github.com/twmb/franz-go/pkg/kgo"
)

// The output: each message a record, produced by an idempotent acks=all LZ4 franz-go
// producer; WriteBatch returns (and so the message is acked, and http_server's sync
// response is sent) only once every record's produce promise came back without error.
const (
	koFieldSeedBrokers   = "seed_brokers"
	koFieldTopic         = "topic"
	koFieldKey           = "key"
	koFieldIdempotent    = "idempotent_write"
	koFieldCompression   = "compression"
	koFieldLinger        = "linger"
	koFieldMaxBuffered   = "max_buffered_records"
	koFieldTimeout       = "timeout"
	koFieldBatching      = "batching"
	koDefaultMaxInFlight = 64
)

func kafkaOutputSpec() *service.ConfigSpec {
	return service.NewConfigSpec().
		Summary("streamproc bench peer: writes messages to a Kafka topic with franz-go, as Redpanda Connect's kafka_franz output does.").
		Description("Producer: idempotent writes, acks=all (required by idempotence, and forced here either way), "+
			"one compression codec (LZ4 by default). A message is acknowledged only once the broker acknowledged its record.").
		Fields(
			service.NewStringListField(koFieldSeedBrokers).
				Description("Kafka seed brokers; an entry may hold a comma-separated list.").
				Example([]string{"127.0.0.1:9092"}),
			service.NewStringField(koFieldTopic).Description("The topic written to."),
			service.NewInterpolatedStringField(koFieldKey).
				Description("The record key (interpolated). Unset or empty: no key (franz-go's sticky partitioner); "+
					"otherwise the key's murmur2 hash picks the partition, as Kafka's Java client does.").
				Optional(),
			service.NewBoolField(koFieldIdempotent).Description("Idempotent producer.").Default(true),
			service.NewStringEnumField(koFieldCompression, "lz4", "zstd", "snappy", "gzip", "none").
				Description("Record batch compression.").Default("lz4"),
			service.NewStringField(koFieldLinger).
				Description("How long a partition's batch waits for more records; empty: franz-go's default (10ms).").
				Default(""),
			service.NewIntField(koFieldMaxBuffered).
				Description("Records franz-go buffers before Produce blocks.").Default(10000),
			service.NewDurationField(koFieldTimeout).
				Description("Record delivery timeout (0: none, franz-go retries until the write's context ends).").
				Default("10s"),
			service.NewOutputMaxInFlightField().Default(koDefaultMaxInFlight),
			service.NewBatchPolicyField(koFieldBatching),
		)
}

func init() {
	service.MustRegisterBatchOutput("kafka_franz_peer", kafkaOutputSpec(),
		func(conf *service.ParsedConfig, mgr *service.Resources) (
			out service.BatchOutput, policy service.BatchPolicy, maxInFlight int, err error,
		) {
			if maxInFlight, err = conf.FieldMaxInFlight(); err != nil {
				return
			}
			if policy, err = conf.FieldBatchPolicy(koFieldBatching); err != nil {
				return
			}
			out, err = newKafkaOutput(conf, mgr)
			return
		})
}

type kafkaOutput struct {
	opts  []kgo.Opt
	topic string
	key   *service.InterpolatedString
	log   *service.Logger

	mu     sync.RWMutex
	client *kgo.Client
}

func newKafkaOutput(conf *service.ParsedConfig, mgr *service.Resources) (*kafkaOutput, error) {
	o := &kafkaOutput{log: mgr.Logger()}
	brokersRaw, err := conf.FieldStringList(koFieldSeedBrokers)
	if err != nil {
		return nil, err
	}
	brokers := seedBrokers(brokersRaw)
	if len(brokers) == 0 {
		return nil, errors.New("seed_brokers: at least one broker is needed")
	}
	if o.topic, err = conf.FieldString(koFieldTopic); err != nil {
		return nil, err
	}
	if o.topic == "" {
		return nil, errors.New("topic: empty")
	}
	if conf.Contains(koFieldKey) {
		if o.key, err = conf.FieldInterpolatedString(koFieldKey); err != nil {
			return nil, err
		}
		// An empty static key (such as `key: "${PEER_KEY:}"` with PEER_KEY unset) is no key.
		if s, static := o.key.Static(); static && s == "" {
			o.key = nil
		}
	}
	idempotent, err := conf.FieldBool(koFieldIdempotent)
	if err != nil {
		return nil, err
	}
	compression, err := conf.FieldString(koFieldCompression)
	if err != nil {
		return nil, err
	}
	lingerStr, err := conf.FieldString(koFieldLinger)
	if err != nil {
		return nil, err
	}
	maxBuffered, err := conf.FieldInt(koFieldMaxBuffered)
	if err != nil {
		return nil, err
	}
	timeout, err := conf.FieldDuration(koFieldTimeout)
	if err != nil {
		return nil, err
	}

	o.opts = []kgo.Opt{
		kgo.SeedBrokers(brokers...),
		kgo.DefaultProduceTopic(o.topic),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerBatchCompression(compressionCodec(compression)),
		kgo.MaxBufferedRecords(maxBuffered),
		kgo.ClientID("streamproc-connect-peer"),
	}
	if !idempotent {
		o.opts = append(o.opts, kgo.DisableIdempotentWrite())
	}
	if lingerStr != "" {
		linger, err := time.ParseDuration(lingerStr)
		if err != nil {
			return nil, fmt.Errorf("linger: %w", err)
		}
		o.opts = append(o.opts, kgo.ProducerLinger(linger))
	}
	if timeout > 0 {
		o.opts = append(o.opts, kgo.RecordDeliveryTimeout(timeout))
	}
	return o, nil
}

func (o *kafkaOutput) Connect(ctx context.Context) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.client != nil {
		return nil
	}
	cl, err := kgo.NewClient(o.opts...)
	if err != nil {
		return err
	}
	if err := cl.Ping(ctx); err != nil {
		cl.Close()
		return err
	}
	o.client = cl
	o.log.Infof("kafka_franz_peer: producing to topic %s", o.topic)
	return nil
}

func (o *kafkaOutput) WriteBatch(ctx context.Context, batch service.MessageBatch) error {
	o.mu.RLock()
	cl := o.client
	o.mu.RUnlock()
	if cl == nil {
		return service.ErrNotConnected
	}
	records := make([]*kgo.Record, 0, len(batch))
	for i, msg := range batch {
		value, err := msg.AsBytes()
		if err != nil {
			return err
		}
		rec := &kgo.Record{Topic: o.topic, Value: value}
		if o.key != nil {
			key, err := batch.TryInterpolatedBytes(i, o.key)
			if err != nil {
				return fmt.Errorf("key interpolation: %w", err)
			}
			if len(key) > 0 {
				rec.Key = key
			}
		}
		records = append(records, rec)
	}
	// ProduceSync waits for every record's promise: the broker's ack (acks=all), or an error.
	return cl.ProduceSync(ctx, records...).FirstErr()
}

func (o *kafkaOutput) Close(ctx context.Context) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.client != nil {
		_ = o.client.Flush(ctx)
		o.client.Close()
		o.client = nil
	}
	return nil
}
