package main

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/redpanda-data/benthos/v4/public/service"
	"github.com/twmb/franz-go/pkg/kgo"
)

// The input: a franz-go consumer group member. Records are batched per topic partition
// through Benthos' batching policy (so a batch never mixes partitions), and a partition's
// offset is marked for commit only once a batch and every batch before it on that
// partition were acknowledged downstream (at-least-once, as kafka_franz's checkpointing).
// Marked offsets are committed every commit_period, on a rebalance and on close.
const (
	kiFieldSeedBrokers     = "seed_brokers"
	kiFieldTopics          = "topics"
	kiFieldConsumerGroup   = "consumer_group"
	kiFieldStartFromOldest = "start_from_oldest"
	kiFieldCheckpointLimit = "checkpoint_limit"
	kiFieldCommitPeriod    = "commit_period"
	kiFieldMaxPollRecords  = "max_poll_records"
	kiFieldBatching        = "batching"
)

func kafkaInputSpec() *service.ConfigSpec {
	return service.NewConfigSpec().
		Summary("streamproc bench peer: consumes Kafka topics in a consumer group with franz-go, as Redpanda Connect's kafka_franz input does.").
		Description("Offsets are committed only after the messages were acknowledged downstream, in partition order (at-least-once). "+
			"Batches are formed per partition by the batching policy.").
		Fields(
			service.NewStringListField(kiFieldSeedBrokers).
				Description("Kafka seed brokers; an entry may hold a comma-separated list.").
				Example([]string{"127.0.0.1:9092"}),
			service.NewStringListField(kiFieldTopics).Description("Topics consumed."),
			service.NewStringField(kiFieldConsumerGroup).Description("The consumer group."),
			service.NewBoolField(kiFieldStartFromOldest).
				Description("With no committed offset, start from the oldest record (else the newest).").
				Default(true),
			service.NewIntField(kiFieldCheckpointLimit).
				Description("Unacknowledged messages one partition may have before polling stops (back pressure), as kafka_franz's checkpoint_limit.").
				Default(1024),
			service.NewDurationField(kiFieldCommitPeriod).
				Description("How often marked offsets are committed.").
				Default("1s"),
			service.NewIntField(kiFieldMaxPollRecords).
				Description("Records taken from franz-go's buffer per poll.").
				Default(10000),
			service.NewAutoRetryNacksToggleField(),
			service.NewBatchPolicyField(kiFieldBatching),
		)
}

func init() {
	service.MustRegisterBatchInput("kafka_franz_peer", kafkaInputSpec(),
		func(conf *service.ParsedConfig, mgr *service.Resources) (service.BatchInput, error) {
			in, err := newKafkaInput(conf, mgr)
			if err != nil {
				return nil, err
			}
			// auto_replay_nacks (default true): a nacked batch is retried from memory, so
			// the checkpoint below only ever sees successes.
			return service.AutoRetryNacksBatchedToggled(conf, in)
		})
}

type topicPartition struct {
	topic     string
	partition int32
}

// checkpoint is one batch handed downstream: the last offset it covers and its size.
type checkpoint struct {
	offset int64
	epoch  int32
	n      int
	done   bool
}

type partitionState struct {
	tp      topicPartition
	batcher *service.Batcher
	// The records in the batcher not yet flushed: how many and the last one.
	count int
	last  *kgo.Record
	// Batches handed downstream, in offset order, and their unacknowledged messages.
	pending     []*checkpoint
	outstanding int
	revoked     bool
}

type readyBatch struct {
	batch service.MessageBatch
	ack   service.AckFunc
}

type kafkaInput struct {
	brokers         []string
	topics          []string
	group           string
	startFromOldest bool
	checkpointLimit int
	commitPeriod    time.Duration
	maxPollRecords  int
	policy          service.BatchPolicy
	res             *service.Resources
	log             *service.Logger

	clientMu sync.RWMutex
	client   *kgo.Client

	mu    sync.Mutex
	parts map[topicPartition]*partitionState
	acked chan struct{} // a token after each ack: a blocked ReadBatch looks again

	ready []readyBatch // only touched by ReadBatch's goroutine (under mu)
}

func newKafkaInput(conf *service.ParsedConfig, mgr *service.Resources) (*kafkaInput, error) {
	k := &kafkaInput{
		res:   mgr,
		log:   mgr.Logger(),
		parts: map[topicPartition]*partitionState{},
		acked: make(chan struct{}, 1),
	}
	brokersRaw, err := conf.FieldStringList(kiFieldSeedBrokers)
	if err != nil {
		return nil, err
	}
	if k.brokers = seedBrokers(brokersRaw); len(k.brokers) == 0 {
		return nil, errors.New("seed_brokers: at least one broker is needed")
	}
	topicsRaw, err := conf.FieldStringList(kiFieldTopics)
	if err != nil {
		return nil, err
	}
	if k.topics = seedBrokers(topicsRaw); len(k.topics) == 0 {
		return nil, errors.New("topics: at least one topic is needed")
	}
	if k.group, err = conf.FieldString(kiFieldConsumerGroup); err != nil {
		return nil, err
	}
	if k.group == "" {
		return nil, errors.New("consumer_group: empty")
	}
	if k.startFromOldest, err = conf.FieldBool(kiFieldStartFromOldest); err != nil {
		return nil, err
	}
	if k.checkpointLimit, err = conf.FieldInt(kiFieldCheckpointLimit); err != nil {
		return nil, err
	}
	if k.checkpointLimit < 1 {
		k.checkpointLimit = 1
	}
	if k.commitPeriod, err = conf.FieldDuration(kiFieldCommitPeriod); err != nil {
		return nil, err
	}
	if k.maxPollRecords, err = conf.FieldInt(kiFieldMaxPollRecords); err != nil {
		return nil, err
	}
	if k.policy, err = conf.FieldBatchPolicy(kiFieldBatching); err != nil {
		return nil, err
	}
	return k, nil
}

func (k *kafkaInput) Connect(ctx context.Context) error {
	k.clientMu.Lock()
	defer k.clientMu.Unlock()
	if k.client != nil {
		return nil
	}
	reset := kgo.NewOffset().AtEnd()
	if k.startFromOldest {
		reset = kgo.NewOffset().AtStart()
	}
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(k.brokers...),
		kgo.ClientID("streamproc-connect-peer"),
		kgo.ConsumerGroup(k.group),
		kgo.ConsumeTopics(k.topics...),
		kgo.ConsumeResetOffset(reset),
		kgo.AutoCommitMarks(),
		kgo.AutoCommitInterval(k.commitPeriod),
		kgo.OnPartitionsRevoked(k.onRevoked),
		kgo.OnPartitionsLost(k.onLost),
	)
	if err != nil {
		return err
	}
	if err := cl.Ping(ctx); err != nil {
		cl.Close()
		return err
	}
	k.client = cl
	k.log.Infof("kafka_franz_peer: consuming %v as group %s", k.topics, k.group)
	return nil
}

func (k *kafkaInput) getClient() *kgo.Client {
	k.clientMu.RLock()
	defer k.clientMu.RUnlock()
	return k.client
}

// onRevoked: the revoked partitions' pending batches no longer mark anything (their
// records go to the new owner from the last commit), then what was marked is committed.
func (k *kafkaInput) onRevoked(ctx context.Context, cl *kgo.Client, revoked map[string][]int32) {
	k.drop(ctx, revoked)
	if err := cl.CommitMarkedOffsets(ctx); err != nil {
		k.log.Warnf("kafka_franz_peer: commit on revoke: %v", err)
	}
}

func (k *kafkaInput) onLost(ctx context.Context, _ *kgo.Client, lost map[string][]int32) {
	k.drop(ctx, lost)
}

func (k *kafkaInput) drop(ctx context.Context, parts map[string][]int32) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for topic, ps := range parts {
		for _, p := range ps {
			tp := topicPartition{topic, p}
			if st, ok := k.parts[tp]; ok {
				st.revoked = true
				st.pending = nil
				st.outstanding = 0
				_ = st.batcher.Close(ctx)
				delete(k.parts, tp)
			}
		}
	}
	k.signal()
}

func (k *kafkaInput) signal() {
	select {
	case k.acked <- struct{}{}:
	default:
	}
}

func (k *kafkaInput) partition(topic string, partition int32) (*partitionState, error) {
	tp := topicPartition{topic, partition}
	if st, ok := k.parts[tp]; ok {
		return st, nil
	}
	b, err := k.policy.NewBatcher(k.res)
	if err != nil {
		return nil, err
	}
	st := &partitionState{tp: tp, batcher: b}
	k.parts[tp] = st
	return st, nil
}

// full: some partition has checkpoint_limit unacknowledged messages (under mu).
func (k *kafkaInput) full() bool {
	for _, st := range k.parts {
		if st.outstanding >= k.checkpointLimit {
			return true
		}
	}
	return false
}

func recordMessage(r *kgo.Record) *service.Message {
	m := service.NewMessage(r.Value)
	m.MetaSetMut("kafka_key", string(r.Key))
	m.MetaSetMut("kafka_topic", r.Topic)
	m.MetaSetMut("kafka_partition", int(r.Partition))
	m.MetaSetMut("kafka_offset", int(r.Offset))
	m.MetaSetMut("kafka_timestamp_unix", r.Timestamp.Unix())
	m.MetaSetMut("kafka_tombstone_message", r.Value == nil)
	for _, h := range r.Headers {
		m.MetaSetMut(h.Key, string(h.Value))
	}
	return m
}

// flush turns the partition's batcher content into a ready batch (under mu).
func (k *kafkaInput) flush(ctx context.Context, st *partitionState) {
	if st.count == 0 {
		return
	}
	batch, _ := st.batcher.Flush(ctx)
	cp := &checkpoint{offset: st.last.Offset, epoch: st.last.LeaderEpoch, n: st.count}
	st.count, st.last = 0, nil
	st.pending = append(st.pending, cp)
	st.outstanding += cp.n
	ack := func(_ context.Context, err error) error {
		if err != nil {
			return nil // not committed: redelivered after a restart or rebalance
		}
		k.ackCheckpoint(st, cp)
		return nil
	}
	if len(batch) == 0 { // the batching processors dropped everything: done already
		k.ackCheckpointLocked(st, cp)
		return
	}
	k.ready = append(k.ready, readyBatch{batch: batch, ack: ack})
}

func (k *kafkaInput) ackCheckpoint(st *partitionState, cp *checkpoint) {
	k.mu.Lock()
	k.ackCheckpointLocked(st, cp)
	k.mu.Unlock()
	k.signal()
}

// ackCheckpointLocked marks the partition's offset past every acknowledged batch at the
// head of its pending list: never past one still in flight.
func (k *kafkaInput) ackCheckpointLocked(st *partitionState, cp *checkpoint) {
	if st.revoked || cp.done {
		return
	}
	cp.done = true
	st.outstanding -= cp.n
	var head *checkpoint
	for len(st.pending) > 0 && st.pending[0].done {
		head = st.pending[0]
		st.pending[0] = nil
		st.pending = st.pending[1:]
	}
	if head == nil {
		return
	}
	k.log.Tracef("kafka_franz_peer: mark %s/%d at %d", st.tp.topic, st.tp.partition, head.offset+1)
	if cl := k.getClient(); cl != nil {
		cl.MarkCommitOffsets(map[string]map[int32]kgo.EpochOffset{
			st.tp.topic: {st.tp.partition: {Epoch: head.epoch, Offset: head.offset + 1}},
		})
	}
}

// flushDue flushes the batchers whose period elapsed; with no period in the policy,
// every partial batch left after a poll (under mu). It returns the wait until the next
// period-based flush, if any batcher still holds messages.
func (k *kafkaInput) flushDue(ctx context.Context) (time.Duration, bool) {
	var next time.Duration
	var have bool
	for _, st := range k.parts {
		if st.count == 0 {
			continue
		}
		d, timed := st.batcher.UntilNext()
		if !timed || d <= time.Millisecond {
			k.flush(ctx, st)
			continue
		}
		if !have || d < next {
			next, have = d, true
		}
	}
	return next, have
}

func (k *kafkaInput) ReadBatch(ctx context.Context) (service.MessageBatch, service.AckFunc, error) {
	for {
		k.mu.Lock()
		if len(k.ready) > 0 {
			r := k.ready[0]
			k.ready[0] = readyBatch{}
			k.ready = k.ready[1:]
			k.mu.Unlock()
			return r.batch, r.ack, nil
		}
		full := k.full()
		next, timed := k.flushDue(ctx)
		flushed := len(k.ready) > 0
		k.mu.Unlock()
		if flushed {
			continue
		}
		if full { // back pressure: wait for acks
			select {
			case <-k.acked:
				continue
			case <-ctx.Done():
				return nil, nil, ctx.Err()
			}
		}

		cl := k.getClient()
		if cl == nil {
			return nil, nil, service.ErrNotConnected
		}
		pollCtx, cancel := ctx, context.CancelFunc(func() {})
		if timed {
			pollCtx, cancel = context.WithTimeout(ctx, next)
		}
		fetches := cl.PollRecords(pollCtx, k.maxPollRecords)
		cancel()
		if fetches.IsClientClosed() {
			return nil, nil, service.ErrNotConnected
		}
		fetches.EachError(func(topic string, p int32, err error) {
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
				k.log.Warnf("kafka_franz_peer: fetch %s/%d: %v", topic, p, err)
			}
		})

		k.mu.Lock()
		var perr error
		fetches.EachPartition(func(ftp kgo.FetchTopicPartition) {
			if len(ftp.Records) == 0 || perr != nil {
				return
			}
			st, err := k.partition(ftp.Topic, ftp.Partition)
			if err != nil {
				perr = err
				return
			}
			for _, r := range ftp.Records {
				st.count++
				st.last = r
				if st.batcher.Add(recordMessage(r)) {
					k.flush(ctx, st)
				}
			}
		})
		k.flushDue(ctx)
		k.mu.Unlock()
		if perr != nil {
			return nil, nil, perr
		}
		if ctx.Err() != nil {
			k.mu.Lock()
			empty := len(k.ready) == 0
			k.mu.Unlock()
			if empty {
				return nil, nil, ctx.Err()
			}
		}
	}
}

func (k *kafkaInput) Close(ctx context.Context) error {
	k.clientMu.Lock()
	cl := k.client
	k.client = nil
	k.clientMu.Unlock()
	if cl != nil {
		if err := cl.CommitMarkedOffsets(ctx); err != nil {
			k.log.Warnf("kafka_franz_peer: commit on close: %v", err)
		}
		cl.Close()
	}
	k.mu.Lock()
	for tp, st := range k.parts {
		_ = st.batcher.Close(ctx)
		delete(k.parts, tp)
	}
	k.mu.Unlock()
	return nil
}
