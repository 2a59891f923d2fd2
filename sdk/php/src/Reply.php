<?php

declare(strict_types=1);

namespace Hotsock;

use Hotsock\Internal\Scheduler;
use Hotsock\Internal\Wait;

/**
 * The server's answer to a channel request that was already sent: call
 * `wait()` for the outcome, or drop the object if it does not matter (the
 * reply is then discarded when it arrives).
 *
 * @template T
 */
final class Reply
{
    /** @param \Closure(string): T $decode */
    public function __construct(
        private readonly Scheduler $scheduler,
        private readonly int $request,
        private readonly \Closure $decode,
    ) {
        $scheduler->expect($request, $this);
    }

    /**
     * Waits for the reply (other connections' handlers run meanwhile).
     *
     * @return T
     * @throws ChannelError when the server refused the request
     */
    public function wait(): mixed
    {
        $this->scheduler->wait(Wait::reply($this->request));
        [$refused, $body] = $this->scheduler->takeReply($this->request);
        if ($refused) {
            throw ChannelError::decode($body);
        }
        return ($this->decode)($body);
    }

    public function __destruct()
    {
        $this->scheduler->forget($this->request);
    }
}
