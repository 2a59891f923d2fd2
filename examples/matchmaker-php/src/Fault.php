<?php

// A fault-injection point for the crash tests, as
// examples/matchmaker/src/fault.rs: off unless the environment asks for it.
// With MATCH_FAULT_POINT=<name>, MATCH_FAULT_UID=<uid> and
// MATCH_FAULT_FILE=<path>, the first worker to reach point <name> for that
// player writes its pid into the file and freezes there, holding the pool
// lock in the middle of an update, until the test SIGKILLs it. The file is
// created exclusively, so the fault fires once per run. `$written` runs
// first: it waits for the writes posted so far, which a Rust worker has
// made by then.

declare(strict_types=1);

namespace Matchmaker;

final class Fault
{
    public static function point(string $point, int $uid, ?\Closure $written = null): void
    {
        if (getenv('MATCH_FAULT_POINT') !== $point || getenv('MATCH_FAULT_UID') !== (string) $uid) {
            return;
        }
        $path = getenv('MATCH_FAULT_FILE');
        $file = $path === false ? false : @fopen($path, 'x');
        if ($file === false) {
            return;
        }
        if ($written !== null) {
            $written();
        }
        fwrite($file, (string) getmypid());
        fclose($file);
        // Blocks the worker's only loop on purpose: nothing else may run, so
        // the pool lock stays held and the update half done.
        while (true) {
            sleep(1);
        }
    }
}
