<?php

declare(strict_types=1);

namespace Hotsock\Internal;

/**
 * Captures what user code prints (`echo`, `print`, `var_dump`) and logs it
 * to stderr. The protocol socket is fd 0 and stdout is the server's, so
 * such output could never corrupt the protocol stream; captured, it also
 * cannot reach the server's stdout unlabeled, and it is seen in the log.
 */
final class StrayOutput
{
    /** Longest stray text logged per drain; the rest is counted. */
    private const LOG_MAX_BYTES = 1024;

    private int $level = 0;

    public function start(): void
    {
        // display_errors=stderr keeps PHP's own warnings out of stdout too.
        ini_set('display_errors', 'stderr');
        ob_start($this->capture(...));
        $this->level = ob_get_level();
    }

    /** Pushes captured text through the callback; restarts capture if user code ended our buffer. */
    public function drain(): void
    {
        while (ob_get_level() > $this->level) {
            // A buffer user code left open would hold output forever.
            ob_end_flush();
        }
        if (ob_get_level() < $this->level || $this->level === 0) {
            $this->start();
            return;
        }
        ob_flush();
    }

    private function capture(string $text, int $phase): string
    {
        if ($text !== '') {
            $shown = strlen($text) > self::LOG_MAX_BYTES
                ? substr($text, 0, self::LOG_MAX_BYTES) . sprintf('... (%d bytes in all)', strlen($text))
                : $text;
            Log::line('stray output from user code (logged, sent to no client): ' . $shown);
        }
        return '';
    }
}
