package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/orchestrator"
)

// viewSize is the size of the engine's Redis view at the end of a run, so
// that a run with a retention can be set beside one without: with a
// retention it stays bounded by the sagas that ended within it.
type viewSize struct {
	// states counts the saga state keys of each saga type, in
	// harness.sagaTypes order.
	states []int
	// keys is DBSIZE: every key, the checkpoints, deadlines and attempt
	// counts included.
	keys int64
	// used is INFO memory's used_memory, usedHuman its
	// used_memory_human.
	used      int64
	usedHuman string
}

// readViewSize reads the size of the engine's Redis view.
func (h *harness) readViewSize(ctx context.Context) (viewSize, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var v viewSize
	for _, t := range h.sagaTypes() {
		n := 0
		it := h.engRdb.Scan(ctx, 0, orchestrator.StateKeyPattern(t), 1000).Iterator()
		for it.Next(ctx) {
			n++
		}
		if err := it.Err(); err != nil {
			return v, fmt.Errorf("SCAN %s: %w", orchestrator.StateKeyPattern(t), err)
		}
		v.states = append(v.states, n)
	}
	var err error
	if v.keys, err = h.engRdb.DBSize(ctx).Result(); err != nil {
		return v, fmt.Errorf("DBSIZE: %w", err)
	}
	if v.used, err = infoInt(ctx, h.engRdb, "memory", "used_memory"); err != nil {
		return v, err
	}
	v.usedHuman, err = infoField(ctx, h.engRdb, "memory", "used_memory_human")
	return v, err
}

// infoField reads a field of a section of INFO.
func infoField(ctx context.Context, rdb *redis.Client, section, field string) (string, error) {
	s, err := rdb.Info(ctx, section).Result()
	if err != nil {
		return "", fmt.Errorf("INFO %s: %w", section, err)
	}
	for _, line := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return v, nil
		}
	}
	return "", fmt.Errorf("INFO %s has no %s", section, field)
}

// String is the view's size as the summary prints it.
func (v viewSize) String(types []string) string {
	total := 0
	var per []string
	for i, n := range v.states {
		total += n
		per = append(per, fmt.Sprintf("%s %d", types[i], n))
	}
	return fmt.Sprintf("%d state keys (%s), DBSIZE %d, used_memory %s (%d bytes)", total, strings.Join(per, ", "), v.keys, v.usedHuman, v.used)
}
